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


# ---------------------------------------------------------------- CamVid, original 32-class colour labels
# The 32 classes of Brostow et al.'s CamVid colour labels (LabeledApproved_full/*_L.png) and the usual
# grouping into SegNet's 11 classes (the grouping of MATLAB's CamVid example, which follows Brostow et
# al. 2009): each colour maps to an index of CAMVID_CLASSES, or to IGNORE_INDEX for "Void".
CAMVID32_COLOURS = {
    # name: (RGB colour, 11-class name or None = ignored)
    "Animal": ((64, 128, 64), "Pedestrian"),
    "Archway": ((192, 0, 128), "Building"),
    "Bicyclist": ((0, 128, 192), "Bicyclist"),
    "Bridge": ((0, 128, 64), "Building"),
    "Building": ((128, 0, 0), "Building"),
    "Car": ((64, 0, 128), "Car"),
    "CartLuggagePram": ((64, 0, 192), "Pedestrian"),
    "Child": ((192, 128, 64), "Pedestrian"),
    "Column_Pole": ((192, 192, 128), "Pole"),
    "Fence": ((64, 64, 128), "Fence"),
    "LaneMkgsDriv": ((128, 0, 192), "Road"),
    "LaneMkgsNonDriv": ((192, 0, 64), "Road"),
    "Misc_Text": ((128, 128, 64), "SignSymbol"),
    "MotorcycleScooter": ((192, 0, 192), "Bicyclist"),
    "OtherMoving": ((128, 64, 64), "Car"),
    "ParkingBlock": ((64, 192, 128), "Pavement"),
    "Pedestrian": ((64, 64, 0), "Pedestrian"),
    "Road": ((128, 64, 128), "Road"),
    "RoadShoulder": ((128, 128, 192), "Pavement"),
    "Sidewalk": ((0, 0, 192), "Pavement"),
    "SignSymbol": ((192, 128, 128), "SignSymbol"),
    "Sky": ((128, 128, 128), "Sky"),
    "SUVPickupTruck": ((64, 128, 192), "Car"),
    "TrafficCone": ((0, 0, 64), "Pole"),
    "TrafficLight": ((0, 64, 64), "SignSymbol"),
    "Train": ((192, 64, 128), "Car"),
    "Tree": ((128, 128, 0), "Tree"),
    "Truck_Bus": ((192, 128, 192), "Car"),
    "Tunnel": ((64, 0, 64), "Building"),
    "VegetationMisc": ((192, 192, 0), "Tree"),
    "Void": ((0, 0, 0), None),
    "Wall": ((64, 192, 0), "Building"),
}


def camvid32_colour_to_train_id() -> dict:
    """{(r, g, b): train id in CAMVID_CLASSES or IGNORE_INDEX} for the 32 CamVid colours."""
    return {
        colour: (IGNORE_INDEX if target is None else CAMVID_CLASSES.index(target))
        for colour, target in CAMVID32_COLOURS.values()
    }


# ---------------------------------------------------------------- Cityscapes
# The official table of cityscapesScripts (helpers/labels.py): name, labelId (the value in
# *_gtFine_labelIds.png), trainId (255 = ignored in training and evaluation), category, categoryId, colour.
CITYSCAPES_LABELS = (
    # name,                 id, trainId, category,      catId, colour
    ("unlabeled",            0, 255, "void",            0, (0, 0, 0)),
    ("ego vehicle",          1, 255, "void",            0, (0, 0, 0)),
    ("rectification border", 2, 255, "void",            0, (0, 0, 0)),
    ("out of roi",           3, 255, "void",            0, (0, 0, 0)),
    ("static",               4, 255, "void",            0, (0, 0, 0)),
    ("dynamic",              5, 255, "void",            0, (111, 74, 0)),
    ("ground",               6, 255, "void",            0, (81, 0, 81)),
    ("road",                 7, 0,   "flat",            1, (128, 64, 128)),
    ("sidewalk",             8, 1,   "flat",            1, (244, 35, 232)),
    ("parking",              9, 255, "flat",            1, (250, 170, 160)),
    ("rail track",          10, 255, "flat",            1, (230, 150, 140)),
    ("building",            11, 2,   "construction",    2, (70, 70, 70)),
    ("wall",                12, 3,   "construction",    2, (102, 102, 156)),
    ("fence",               13, 4,   "construction",    2, (190, 153, 153)),
    ("guard rail",          14, 255, "construction",    2, (180, 165, 180)),
    ("bridge",              15, 255, "construction",    2, (150, 100, 100)),
    ("tunnel",              16, 255, "construction",    2, (150, 120, 90)),
    ("pole",                17, 5,   "object",          3, (153, 153, 153)),
    ("polegroup",           18, 255, "object",          3, (153, 153, 153)),
    ("traffic light",       19, 6,   "object",          3, (250, 170, 30)),
    ("traffic sign",        20, 7,   "object",          3, (220, 220, 0)),
    ("vegetation",          21, 8,   "nature",          4, (107, 142, 35)),
    ("terrain",             22, 9,   "nature",          4, (152, 251, 152)),
    ("sky",                 23, 10,  "sky",             5, (70, 130, 180)),
    ("person",              24, 11,  "human",           6, (220, 20, 60)),
    ("rider",               25, 12,  "human",           6, (255, 0, 0)),
    ("car",                 26, 13,  "vehicle",         7, (0, 0, 142)),
    ("truck",               27, 14,  "vehicle",         7, (0, 0, 70)),
    ("bus",                 28, 15,  "vehicle",         7, (0, 60, 100)),
    ("caravan",             29, 255, "vehicle",         7, (0, 0, 90)),
    ("trailer",             30, 255, "vehicle",         7, (0, 0, 110)),
    ("train",               31, 16,  "vehicle",         7, (0, 80, 100)),
    ("motorcycle",          32, 17,  "vehicle",         7, (0, 0, 230)),
    ("bicycle",             33, 18,  "vehicle",         7, (119, 11, 32)),
    # id -1: never written to the labelId PNGs; every id not in this table (34..255) is ignored too.
    ("license plate",       -1, -1,  "vehicle",         7, (0, 0, 142)),
)

_CS_TRAIN = sorted((row for row in CITYSCAPES_LABELS if 0 <= row[2] < 255), key=lambda row: row[2])
CITYSCAPES_CLASSES = tuple(row[0] for row in _CS_TRAIN)  # the 19 trainId classes, in trainId order
CITYSCAPES_PALETTE = tuple(row[5] for row in _CS_TRAIN)
# The 7 categories scored by the benchmark's "category IoU" (categoryId 1..7; "void" is not scored).
CITYSCAPES_CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
# trainId -> index into CITYSCAPES_CATEGORIES (categoryId - 1).
CITYSCAPES_TRAINID_TO_CATEGORY = tuple(row[4] - 1 for row in _CS_TRAIN)
# trainId -> labelId, for writing predictions in the test server's labelId format.
CITYSCAPES_TRAINID_TO_LABELID = tuple(row[1] for row in _CS_TRAIN)


def cityscapes_label_lut():
    """256-entry uint8 lookup table labelId -> trainId; every id without a trainId maps to 255."""
    import numpy as np

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for _, label_id, train_id, *_ in CITYSCAPES_LABELS:
        if label_id >= 0 and 0 <= train_id < 255:
            lut[label_id] = train_id
    return lut


# ---------------------------------------------------------------- Mapillary Vistas v1.2 -> Cityscapes
# The 66 classes of Mapillary Vistas v1.2 (config.json order = the value in labels/*.png).
MAPILLARY_V12_CLASSES = (
    "animal--bird", "animal--ground-animal", "construction--barrier--curb", "construction--barrier--fence",
    "construction--barrier--guard-rail", "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain", "construction--flat--curb-cut",
    "construction--flat--parking", "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane", "construction--flat--sidewalk",
    "construction--structure--bridge", "construction--structure--building", "construction--structure--tunnel",
    "human--person", "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand", "nature--sky",
    "nature--snow", "nature--terrain", "nature--vegetation", "nature--water", "object--banner", "object--bench",
    "object--bike-rack", "object--billboard", "object--catch-basin", "object--cctv-camera",
    "object--fire-hydrant", "object--junction-box", "object--mailbox", "object--manhole",
    "object--phone-booth", "object--pothole", "object--street-light", "object--support--pole",
    "object--support--traffic-sign-frame", "object--support--utility-pole", "object--traffic-light",
    "object--traffic-sign--back", "object--traffic-sign--front", "object--trash-can",
    "object--vehicle--bicycle", "object--vehicle--boat", "object--vehicle--bus", "object--vehicle--car",
    "object--vehicle--caravan", "object--vehicle--motorcycle", "object--vehicle--on-rails",
    "object--vehicle--other-vehicle", "object--vehicle--trailer", "object--vehicle--truck",
    "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle", "void--unlabeled",
)

# Mapillary class -> Cityscapes train class, as MiniNet trains on Mapillary with Cityscapes' 19 classes:
# traffic sign front AND back -> traffic sign; bicyclist, motorcyclist and other rider -> rider (the
# paper's merges); the other rows are the one-to-one matches, plus the surfaces Cityscapes annotates as
# part of a class (lane/crosswalk markings, bike and service lanes are "road"; curbs, curb cuts and
# pedestrian areas are "sidewalk", as in Cityscapes' labelling policy). Every class not listed
# (animals, guard rail, bridge, tunnel, street light, caravan, trailer, boat, ... and void) is ignored.
MAPILLARY_TO_CITYSCAPES = {
    "construction--flat--road": "road",
    "construction--flat--bike-lane": "road",
    "construction--flat--service-lane": "road",
    "construction--flat--crosswalk-plain": "road",
    "marking--crosswalk-zebra": "road",
    "marking--general": "road",
    "construction--flat--sidewalk": "sidewalk",
    "construction--flat--pedestrian-area": "sidewalk",
    "construction--flat--curb-cut": "sidewalk",
    "construction--barrier--curb": "sidewalk",
    "construction--structure--building": "building",
    "construction--barrier--wall": "wall",
    "construction--barrier--fence": "fence",
    "object--support--pole": "pole",
    "object--support--utility-pole": "pole",
    "object--support--traffic-sign-frame": "pole",
    "object--traffic-light": "traffic light",
    "object--traffic-sign--front": "traffic sign",
    "object--traffic-sign--back": "traffic sign",
    "nature--vegetation": "vegetation",
    "nature--terrain": "terrain",
    "nature--sky": "sky",
    "human--person": "person",
    "human--rider--bicyclist": "rider",
    "human--rider--motorcyclist": "rider",
    "human--rider--other-rider": "rider",
    "object--vehicle--car": "car",
    "object--vehicle--truck": "truck",
    "object--vehicle--bus": "bus",
    "object--vehicle--on-rails": "train",
    "object--vehicle--motorcycle": "motorcycle",
    "object--vehicle--bicycle": "bicycle",
}


def mapillary_label_lut():
    """256-entry uint8 lookup table Mapillary v1.2 class index -> Cityscapes trainId (255 = ignored)."""
    import numpy as np

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for name, target in MAPILLARY_TO_CITYSCAPES.items():
        lut[MAPILLARY_V12_CLASSES.index(name)] = CITYSCAPES_CLASSES.index(target)
    return lut


def generate_palette(num_classes: int) -> tuple:
    """Distinct colours for a custom dataset without a palette (PASCAL VOC's bit-interleaving scheme)."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return tuple(palette)
