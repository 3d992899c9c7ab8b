"""Camera conventions against hand-computed cases."""

import math

import pytest
import torch

from core.cameras import (
    blender_to_opengl,
    default_input_poses,
    get_rays,
    normalize_to_first_view,
    opencv_to_opengl,
    opengl_to_blender,
    opengl_to_opencv,
    orbit_camera,
    plucker_embedding,
    projection_matrix,
    renderer_cameras,
)

FOVY, NEAR, FAR, RADIUS = 49.1, 0.5, 2.5, 1.5


def test_orbit_camera_hand_computed():
    # azimuth 0, elevation 0: camera on +z looking at the origin, OpenGL axes = identity rotation
    pose = orbit_camera(0.0, 0.0, RADIUS)
    expected = torch.eye(4)
    expected[2, 3] = RADIUS
    assert torch.allclose(pose, expected, atol=1e-6)
    # azimuth 90: camera on +x; its backward axis (+z column) is +x, right axis is -z
    pose = orbit_camera(0.0, 90.0, 2.0)
    assert torch.allclose(pose[:3, 3], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(pose[:3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(pose[:3, 0], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    # elevation -30 (kiui/LGM sign): camera above the object
    pose = orbit_camera(-30.0, 0.0, 1.0)
    assert torch.allclose(pose[:3, 3], torch.tensor([0.0, 0.5, math.sqrt(3) / 2]), atol=1e-6)


@pytest.mark.parametrize("elevation", [0.0, -30.0, 20.0])
def test_poses_are_rigid(elevation):
    poses = default_input_poses(elevation, RADIUS)
    rot = poses[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(4), atol=1e-6)
    assert torch.allclose(poses[:, :3, 3].norm(dim=-1), torch.full((4,), RADIUS), atol=1e-6)


def test_centre_ray_of_each_default_view_passes_through_origin():
    # with an even size the principal point lies between the 4 centre pixels: average their rays
    size = 64
    poses = default_input_poses(0.0, RADIUS)
    rays_o, rays_d = get_rays(poses, size, size, FOVY)  # [4, H, W, 3]
    d = rays_d[:, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1].mean(dim=(1, 2))
    d = d / d.norm(dim=-1, keepdim=True)
    o = rays_o[:, 0, 0]
    # distance of the origin from the line o + t d
    dist = torch.linalg.cross(-o, d, dim=-1).norm(dim=-1)
    assert torch.all(dist < 1e-5)
    # and it points towards the origin
    assert torch.all((d * -o).sum(-1) > 0)


def test_ray_corner_angle_matches_fov():
    size = 32
    _, rays_d = get_rays(orbit_camera(0.0, 0.0, RADIUS), size, size, FOVY)
    # top row centre pixel's ray: angle from the optical axis is atan(tan(fovy/2) * (1 - 1/size))
    top = (rays_d[0, size // 2 - 1] + rays_d[0, size // 2]) / 2
    top = top / top.norm()
    expected = math.atan(math.tan(math.radians(FOVY) / 2) * (1 - 1 / size))
    angle = math.acos(float(-top[2]))
    assert abs(angle - expected) < 1e-5
    assert top[1] > 0  # row 0 is the top of the image (OpenGL y up)


def test_opengl_opencv_inverse_each_other():
    poses = orbit_camera(torch.tensor([-20.0, 10.0]), torch.tensor([30.0, 250.0]), RADIUS)
    assert torch.allclose(opencv_to_opengl(opengl_to_opencv(poses)), poses)
    cv = opengl_to_opencv(poses)
    # OpenCV camera looks along +z: its z column points from the camera towards the origin
    towards = -poses[:, :3, 3] / poses[:, :3, 3].norm(dim=-1, keepdim=True)
    assert torch.allclose(cv[:, :3, 2], towards, atol=1e-6)


def test_blender_conversion():
    poses = orbit_camera(torch.tensor([-20.0, 10.0]), torch.tensor([30.0, 250.0]), RADIUS)
    assert torch.allclose(blender_to_opengl(opengl_to_blender(poses)), poses, atol=1e-6)
    # a Blender camera at (0, -2, 0) (z up world) looking along +y: OpenCV axes x right, y down (-z), z forward (+y)
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    c2w[:3, 3] = torch.tensor([0.0, -2.0, 0.0])
    ours = blender_to_opengl(c2w)
    # in our y-up world that camera sits on +z at distance 2 and is the canonical orbit camera
    assert torch.allclose(ours, orbit_camera(0.0, 0.0, 2.0), atol=1e-6)


def test_projection_of_known_point_lands_on_hand_computed_pixel():
    size = 128
    proj = projection_matrix(FOVY, NEAR, FAR)
    cam_view, cam_view_proj, cam_pos = renderer_cameras(orbit_camera(0.0, 0.0, RADIUS), proj)
    assert torch.allclose(cam_pos, torch.tensor([0.0, 0.0, RADIUS]))
    # world point (0.1, 0.2, 0.3): depth along the view axis 1.5 - 0.3 = 1.2, x right, y up in the image
    p = torch.tensor([0.1, 0.2, 0.3, 1.0])
    t = p @ cam_view
    assert torch.allclose(t[:3], torch.tensor([0.1, -0.2, 1.2]), atol=1e-6)  # OpenCV: y down, z forward
    clip = p @ cam_view_proj
    ndc = clip[:3] / clip[3]
    pix = ((ndc[:2] + 1) * size - 1) / 2
    focal = size / (2 * math.tan(math.radians(FOVY) / 2))
    # world up is image up: the row index decreases
    expected = torch.tensor([size / 2 - 0.5 + focal * 0.1 / 1.2, size / 2 - 0.5 - focal * 0.2 / 1.2])
    assert torch.allclose(pix, expected, atol=1e-4)
    # the 3DGS matrix maps view depth z to z_ndc = ((f + n) z - f n) / ((f - n) z): n/(f-n) at the
    # near plane, f/(f-n) at the far plane (the rasterizer takes depth from view space, not from here)
    for z, want in ((NEAR, NEAR / (FAR - NEAR)), (FAR, FAR / (FAR - NEAR))):
        c = torch.tensor([0.0, 0.0, z, 1.0]) @ proj
        assert abs(float(c[2] / c[3]) - want) < 1e-6


def test_plucker_embedding():
    pose = orbit_camera(-15.0, 40.0, RADIUS)
    emb = plucker_embedding(pose, 8, 8, FOVY)  # [6, 8, 8]
    rays_o, rays_d = get_rays(pose, 8, 8, FOVY)
    assert emb.shape == (6, 8, 8)
    assert torch.allclose(emb[3:].permute(1, 2, 0), rays_d)
    # moment o x d is the same for any point on the ray (o + 0.7 d)
    shifted = torch.linalg.cross(rays_o + 0.7 * rays_d, rays_d, dim=-1)
    assert torch.allclose(emb[:3].permute(1, 2, 0), shifted, atol=1e-6)


def test_normalize_to_first_view():
    poses = orbit_camera(torch.tensor([-20.0, -20.0, 10.0]), torch.tensor([75.0, 165.0, 300.0]), RADIUS)
    out = normalize_to_first_view(poses, RADIUS)
    assert torch.allclose(out[0], orbit_camera(0.0, 0.0, RADIUS), atol=1e-5)
    # relative poses are unchanged
    rel = torch.linalg.inv(poses[0]) @ poses[1:]
    rel_out = torch.linalg.inv(out[0]) @ out[1:]
    assert torch.allclose(rel, rel_out, atol=1e-5)


def test_scale_to_radius_uses_the_median_distance():
    from core.cameras import scale_to_radius

    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])  # distances 1, 2, 3: median 2
    out = scale_to_radius(c2w, radius=1.5)
    torch.testing.assert_close(out[:, :3, 3], c2w[:, :3, 3] * 0.75)
    torch.testing.assert_close(out[:, :3, :3], c2w[:, :3, :3])  # rotations untouched
    assert c2w[2, 2, 3] == 3.0  # the input is not changed in place
