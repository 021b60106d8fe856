"""Class names and colour palettes of the supported label spaces."""

IGNORE_INDEX = 255

# CamVid, 11 classes as in SegNet's release (label 11 = void -> ignored).
CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
# The colours of the original CamVid 32-class palette for these 11 classes (SegNet's choice).
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
