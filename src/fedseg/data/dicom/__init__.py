"""DICOM at a site: image series assembled into volumes (``series``), their labels as DICOM SEG,
RTSTRUCT or NRRD mapped to the task's classes by name (``labels``), DICOM SEG written for predictions
(``seg_writer``), and studies pulled from / pushed to a PACS (``pacs``).

Geometry convention (``geometry.Series``): a 3D series is indexed like ITK/SimpleITK, array axes
(column, row, slice), i.e. ``volume.array[0, x, y, z]``; its affine maps those indices to RAS world
millimetres (nibabel's convention: DICOM's LPS with x and y negated), so a DICOM case and its NIfTI
conversion by dcm2niix/SimpleITK look alike to the rest of fedseg. A 2D case (one single-frame image,
``task.spatial_dims = 2``) is indexed (row, column) like a PNG.
"""
