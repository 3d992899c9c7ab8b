"""The embedded synthetic dataset (core/datasets/synthetic.py): items, determinism, and the
ray caster checked against hand-computed geometry."""

import math

import pytest
import torch

from core.cameras import default_input_poses, get_rays, orbit_camera, plucker_embedding
from core.datasets import synthetic
from core.datasets.synthetic import ObjectSpec, Primitive, SyntheticDataset, cast_rays, render_object, sample_object
from core.options import config_defaults, replace

FOVY = 49.1


@pytest.fixture(scope="module")
def opt():
    # the cpu preset at 64 px with 6 views keeps every item cheap (splat_size scales with input_size)
    cpu = config_defaults["cpu"]
    return replace(
        cpu, input_size=64, splat_size=cpu.splat_size * 64 // cpu.input_size, output_size=64, num_views=6,
        num_train_objects=10, num_eval_objects=3, prob_grid_distortion=1.0, prob_cam_jitter=1.0,
    )


@pytest.fixture(scope="module")
def train_item(opt):
    return SyntheticDataset(opt, "train")[0]


def _assert_items_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ------------------------------------------------------------------------------ dataset items


def test_item_has_the_documented_keys_shapes_and_dtypes(opt, train_item):
    v, h, s = opt.num_views, opt.input_size, opt.output_size
    expected = {
        "input": (4, 9, h, h),
        "images_output": (v, 3, s, s),
        "masks_output": (v, 1, s, s),
        "cam_view": (v, 4, 4),
        "cam_view_proj": (v, 4, 4),
        "cam_pos": (v, 3),
    }
    for key, shape in expected.items():
        assert tuple(train_item[key].shape) == shape, key
        assert train_item[key].dtype == torch.float32, key
        assert torch.isfinite(train_item[key]).all(), key
    assert train_item["uid"] == "synthetic-train-000000"
    for key in ("images_output", "masks_output"):
        assert train_item[key].min() >= 0 and train_item[key].max() <= 1
    torch.testing.assert_close(train_item["cam_pos"].norm(dim=-1), torch.full((v,), opt.cam_radius))


def test_lengths_and_uids(opt):
    train, held_out = SyntheticDataset(opt, "train"), SyntheticDataset(opt, "eval")
    assert len(train) == opt.num_train_objects and len(held_out) == opt.num_eval_objects
    assert held_out[2]["uid"] == "synthetic-eval-000002"
    with pytest.raises(ValueError):
        SyntheticDataset(opt, "test")


def test_background_is_white_and_edges_are_soft(train_item):
    images, masks = train_item["images_output"], train_item["masks_output"]
    background = (masks == 0).expand_as(images)
    assert background.any() and (masks == 1).any()
    assert torch.equal(images[background], torch.ones_like(images[background]))
    assert ((masks > 0) & (masks < 1)).any()  # 2x2 supersampled silhouettes


def test_items_are_deterministic_per_index(opt):
    a, b = SyntheticDataset(opt, "train"), SyntheticDataset(opt, "train")
    _assert_items_equal(a[3], b[3])
    assert not torch.equal(a[3]["images_output"], a[4]["images_output"])
    other_seed = SyntheticDataset(replace(opt, seed=1), "train")
    assert not torch.equal(a[3]["images_output"], other_seed[3]["images_output"])


def test_epoch_changes_only_the_augmentations(opt):
    ds = SyntheticDataset(opt, "train")
    ds.set_epoch(0)
    first = ds[1]
    ds.set_epoch(1)
    second = ds[1]
    for key in ("images_output", "masks_output", "cam_view", "cam_view_proj", "cam_pos"):
        assert torch.equal(first[key], second[key]), key
    assert torch.equal(first["input"][0], second["input"][0])  # view 1 is never augmented
    assert not torch.equal(first["input"][1:], second["input"][1:])
    ds.set_epoch(0)
    _assert_items_equal(first, ds[1])


def test_eval_objects_are_held_out_and_seen_from_the_default_cameras(opt):
    train, held_out = SyntheticDataset(opt, "train"), SyntheticDataset(opt, "eval")
    seeds = lambda split, n: {synthetic._object_seed(opt.seed, split, i) for i in range(n)}  # noqa: E731
    assert not seeds("train", 5000) & seeds("eval", 5000)
    assert not torch.equal(train[0]["images_output"], held_out[0]["images_output"])
    spec, c2w = held_out.object_and_cameras(0)
    torch.testing.assert_close(c2w[:4], default_input_poses(0.0, opt.cam_radius))
    item = held_out[0]  # no augmentation: the rays are LGM's default rays
    rays = plucker_embedding(default_input_poses(0.0, opt.cam_radius), opt.input_size, opt.input_size, opt.fovy)
    torch.testing.assert_close(item["input"][:, 3:], rays, atol=1e-5, rtol=0)
    _assert_items_equal(item, held_out[0])


def test_training_cameras_follow_the_recipe(opt):
    _, c2w = SyntheticDataset(opt, "train").object_and_cameras(5)
    pos = c2w[:, :3, 3]
    torch.testing.assert_close(pos.norm(dim=-1), torch.full((opt.num_views,), opt.cam_radius))
    elevation = torch.rad2deg(torch.asin(-pos[:, 1] / opt.cam_radius))
    azimuth = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2]))
    assert torch.allclose(elevation[:4], elevation[0].expand(4), atol=1e-3) and elevation[0].abs() <= 20
    steps = torch.remainder(azimuth[1:4] - azimuth[:3], 360)
    torch.testing.assert_close(steps, torch.full((3,), 90.0), atol=1e-3, rtol=0)
    assert elevation[4:].abs().max() <= 30 + 1e-3


def test_objects_stay_inside_the_ball_and_the_view(opt):
    g = torch.Generator().manual_seed(0)
    kinds = set()
    for _ in range(60):
        spec = sample_object(g)
        assert 1 <= len(spec.primitives) <= 4
        for prim in spec.primitives:
            kinds.add(prim.kind)
            assert float(prim.center.norm()) + prim.bounding_radius() <= synthetic.OBJECT_BOUND + 1e-5
    assert kinds == set(synthetic.KINDS)
    ds = SyntheticDataset(opt, "eval")
    for i in range(len(ds)):
        masks = ds[i]["masks_output"][..., 0, :, :]  # [V, H, W]
        border = torch.cat([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], dim=-1)
        assert border.max() == 0, f"object {i} touches the image border"


# ------------------------------------------------------------------------------ ray casting


def _focal(size: int) -> float:
    return size / 2 / math.tan(math.radians(FOVY) / 2)


def _alpha_area_and_centroid(alpha: torch.Tensor):
    """alpha [H, W] -> (area in pixels, centroid (x, y) in pixel units, pixel (i, j) centred at (j + .5, i + .5))"""
    h, w = alpha.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    area = alpha.double().sum()
    return float(area), float((alpha * xs).sum() / area), float((alpha * ys).sum() / area)


@pytest.mark.parametrize("supersample", [True, False])
def test_centred_sphere_projects_to_the_hand_computed_disc(supersample):
    size, radius, distance = 128, 0.4, 1.5
    spec = ObjectSpec([Primitive("sphere", size=(radius, 0, 0))])
    rgba = render_object(spec, orbit_camera(0.0, 0.0, distance)[None], size, FOVY, supersample=supersample)
    # silhouette cone half-angle asin(r / D): a disc of radius f * r / sqrt(D^2 - r^2) pixels
    disc_radius = _focal(size) * radius / math.sqrt(distance**2 - radius**2)
    area, cx, cy = _alpha_area_and_centroid(rgba[0, 3])
    assert area == pytest.approx(math.pi * disc_radius**2, rel=0.005 if supersample else 0.015)
    assert cx == pytest.approx(size / 2, abs=0.05) and cy == pytest.approx(size / 2, abs=0.05)


def test_off_axis_sphere_projects_to_the_hand_computed_ellipse():
    size, radius, offset, distance = 128, 0.25, 0.3, 1.5
    spec = ObjectSpec([Primitive("sphere", center=(offset, 0, 0), size=(radius, 0, 0))])
    rgba = render_object(spec, orbit_camera(0.0, 0.0, distance)[None], size, FOVY)
    # The silhouette cone (axis at angle theta from the optical axis, half-angle alpha) cuts the
    # image plane z = 1 in an ellipse from tan(theta - alpha) to tan(theta + alpha) along x; its
    # half-height b at the centre x_c solves (x sin(theta) + cos(theta))^2 = (x^2 + y^2 + 1) cos(alpha)^2.
    theta = math.atan2(offset, distance)
    alpha = math.asin(radius / math.hypot(offset, distance))
    lo, hi = math.tan(theta - alpha), math.tan(theta + alpha)
    x_c, a = (lo + hi) / 2, (hi - lo) / 2
    b = math.sqrt((x_c * math.sin(theta) + math.cos(theta)) ** 2 / math.cos(alpha) ** 2 - x_c**2 - 1)
    f = _focal(size)
    area, cx, cy = _alpha_area_and_centroid(rgba[0, 3])
    assert area == pytest.approx(math.pi * a * b * f * f, rel=0.005)
    assert cx == pytest.approx(size / 2 + f * x_c, abs=0.1)
    assert cy == pytest.approx(size / 2, abs=0.1)


def test_centre_pixel_ray_hits_the_sphere_at_the_analytic_depth():
    size, radius, distance = 65, 0.4, 1.5  # odd size: pixel (32, 32) is centred on the optical axis
    spec = ObjectSpec([Primitive("sphere", size=(radius, 0, 0))])
    rays_o, rays_d = get_rays(orbit_camera(0.0, 0.0, distance), size, size, FOVY)
    t, prim = cast_rays(spec, rays_o[32, 32][None], rays_d[32, 32][None])
    assert prim.tolist() == [0]
    assert float(t) == pytest.approx(distance - radius, abs=1e-5)
    torch.testing.assert_close(rays_o[32, 32] + t * rays_d[32, 32], torch.tensor([0.0, 0.0, radius]), atol=1e-5, rtol=0)


S2 = math.sqrt(2)
S3 = math.sqrt(3)
ROT_Z90 = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # local y -> world -x
ROT_X90 = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]  # local y -> world z

BOX = dict(kind="box", size=(0.2, 0.3, 0.4))
ROUND_BOX = dict(kind="box", size=(0.3, 0.3, 0.3), rounding=0.1)  # flat faces inside |x| <= 0.2, edge radius 0.1
CYLINDER = dict(kind="cylinder", size=(0.2, 0.3, 0))  # radius 0.2, half height 0.3 along y
TORUS = dict(kind="torus", size=(0.3, 0.1, 0))  # tube of radius 0.1 around a circle of radius 0.3 in the xz plane
TORUS_UPRIGHT = dict(TORUS, center=(0, 0.2, 0), rotation=ROT_X90)  # the circle in the xy plane around (0, 0.2, 0)

# name: (primitive, ray origin, ray direction, hand-computed t; inf = miss)
HAND_CASES = {
    "sphere off centre": (dict(kind="sphere", center=(0.1, 0, 0), size=(0.3, 0, 0)), (0.1, 0, 1.5), (0, 0, -1), 1.2),
    "sphere missed": (dict(kind="sphere", size=(0.3, 0, 0)), (0.31, 0, 1.5), (0, 0, -1), math.inf),
    "box z face": (BOX, (0, 0, 1.5), (0, 0, -1), 1.1),
    "box x face": (BOX, (1.5, 0.1, 0.1), (-1, 0, 0), 1.3),
    "box y face": (BOX, (0.1, 1.5, 0), (0, -1, 0), 1.2),
    "box missed": (BOX, (0.25, 0, 1.5), (0, 0, -1), math.inf),
    "rounded box face": (ROUND_BOX, (0.05, 0, 1.5), (0, 0, -1), 1.2),
    "rounded box edge": (ROUND_BOX, (1.5 / S2, 0, 1.5 / S2), (-1 / S2, 0, -1 / S2), 1.5 - 0.2 * S2 - 0.1),
    "rounded box corner": (ROUND_BOX, (1.5 / S3,) * 3, (-1 / S3,) * 3, 1.5 - 0.2 * S3 - 0.1),
    "rounded box corner missed": (ROUND_BOX, (0.29, 0.29, 1.5), (0, 0, -1), math.inf),
    "cylinder side": (CYLINDER, (0, 0.1, 1.5), (0, 0, -1), 1.3),
    "cylinder cap": (CYLINDER, (0.1, 1.5, 0), (0, -1, 0), 1.2),
    "cylinder bottom cap": (CYLINDER, (0.1, -1.5, 0), (0, 1, 0), 1.2),
    "cylinder missed beside": (CYLINDER, (0.25, 1.5, 0), (0, -1, 0), math.inf),
    "cylinder missed above": (CYLINDER, (0, 0.35, 1.5), (0, 0, -1), math.inf),
    "cylinder rotated cap": (dict(CYLINDER, rotation=ROT_Z90), (1.5, 0, 0), (-1, 0, 0), 1.2),
    "cylinder rotated side": (dict(CYLINDER, rotation=ROT_Z90), (0, 0, 1.5), (0, 0, -1), 1.3),
    "torus through the hole": (TORUS, (0, 1.5, 0), (0, -1, 0), math.inf),
    "torus outer side": (TORUS, (0, 0, 1.5), (0, 0, -1), 1.1),
    "torus top": (TORUS, (0.3, 1.5, 0), (0, -1, 0), 1.4),
    "torus moved and rotated, hole": (TORUS_UPRIGHT, (0, 0.2, 1.5), (0, 0, -1), math.inf),
    "torus moved and rotated, tube": (TORUS_UPRIGHT, (0.3, 0.2, 1.5), (0, 0, -1), 1.4),
}


@pytest.mark.parametrize("name", list(HAND_CASES))
def test_ray_primitive_intersection_matches_hand_computed_distance(name):
    fields, origin, direction, expected = HAND_CASES[name]
    prim = Primitive(**fields)
    t, hit = cast_rays(ObjectSpec([prim]), torch.tensor([origin]), torch.tensor([direction]))
    if math.isinf(expected):
        assert hit.tolist() == [-1] and math.isinf(float(t))
    else:
        traced = prim.kind == "torus" or prim.rounding > 0  # sphere-traced to within 1e-4 of the surface
        assert hit.tolist() == [0]
        assert float(t) == pytest.approx(expected, abs=2e-4 if traced else 1e-5)


def test_union_takes_the_nearest_primitive():
    near = Primitive("sphere", center=(0, 0, 0.5), size=(0.2, 0, 0))
    far = Primitive("box", center=(0, 0, -0.5), size=(0.2, 0.2, 0.2))
    origin, direction = torch.tensor([[0.0, 0, 1.5], [0, 0, -1.5]]), torch.tensor([[0.0, 0, -1], [0, 0, 1]])
    for order in ([near, far], [far, near]):
        t, hit = cast_rays(ObjectSpec(order), origin, direction)
        torch.testing.assert_close(t, torch.tensor([0.8, 0.8]))
        assert [order[i] for i in hit.tolist()] == [near, far]


def test_shading_is_lambertian_with_the_fixed_light():
    colour = torch.tensor([0.8, 0.5, 0.2])
    spec = ObjectSpec([Primitive("sphere", size=(0.4, 0, 0), color=colour)])
    rgba = render_object(spec, orbit_camera(0.0, 0.0, 1.5)[None], 65, FOVY)
    normal = torch.tensor([0.0, 0.0, 1.0])  # the centre pixel sees the sphere's point facing +z
    key = torch.nn.functional.normalize(torch.tensor(synthetic.KEY_LIGHT), dim=0)
    fill = torch.nn.functional.normalize(torch.tensor(synthetic.FILL_LIGHT), dim=0)
    lambert = lambda light: max(float(normal @ light), 0.0)  # noqa: E731
    light = synthetic.AMBIENT + synthetic.KEY_WEIGHT * lambert(key) + synthetic.FILL_WEIGHT * lambert(fill)
    torch.testing.assert_close(rgba[0, :3, 32, 32], colour * min(light, 1.0), atol=1e-5, rtol=0)
    # the lit side is brighter than the side facing away from the key light
    assert rgba[0, :3, 20, 44].sum() > rgba[0, :3, 44, 20].sum()


def test_patterns_use_both_colours():
    for pattern in ("stripes", "checker", "two_tone"):
        prim = Primitive("box", size=(0.3, 0.3, 0.3), color=(1, 0, 0), color2=(0, 0, 1), pattern=pattern, frequency=8.0)
        rgba = render_object(ObjectSpec([prim]), orbit_camera(-30.0, 30.0, 1.5)[None], 48, FOVY)
        inside = rgba[0, 3] == 1
        red, blue = rgba[0, 0][inside], rgba[0, 2][inside]
        assert ((red > 0) & (blue == 0)).any() and ((blue > 0) & (red == 0)).any(), pattern
