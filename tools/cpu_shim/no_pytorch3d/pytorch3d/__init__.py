"""A stand-in for PyTorch3D, put on PYTHONPATH in the PGSR check (doc/migration.md): PGSR's
training code takes one function from it (`transforms.quaternion_to_matrix`, its Gaussians'
rotation matrices), and PyTorch3D has no wheel for this PyTorch (it builds from source)."""
