"""Segmentation networks by name (MONAI's implementations), 2D and 3D."""
