"""The 19 Cityscapes train-id classes and the id mappings of every supported dataset.

Every dataset in :mod:`npdg.data` yields labels as Cityscapes *train ids*: 0..18 for the classes in
:data:`CLASSES`, :data:`IGNORE_INDEX` (255) for pixels that are not evaluated. Mappings from a dataset's
own ids are lookup tables (``numpy`` arrays indexed by the raw id); raw ids a table does not define
are :data:`UNDEFINED` and make the loaders raise (or map to 255 where the dataset's convention says so).
"""

import numpy as np

NUM_CLASSES = 19
IGNORE_INDEX = 255
UNDEFINED = -1  # marks raw ids that a dataset never uses; loaders report them as corrupt labels

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)

# Official Cityscapes colours, indexed by train id.
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)


def make_lut(mapping, num_ids, default=IGNORE_INDEX):
    """Lookup table of ``num_ids`` entries: ``lut[raw_id] = train_id``; unlisted ids get ``default``."""
    lut = np.full(num_ids, default, dtype=np.int16)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut


# Cityscapes label ids (gtFine_labelIds, also used by GTA5) -> train ids. Ids 0..33 are defined; the
# void/rare ones (unlabeled, ego vehicle, parking, guard rail, caravan, ...) map to 255.
CITYSCAPES_ID_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_LUT = make_lut(CITYSCAPES_ID_TO_TRAIN, 256, default=UNDEFINED)
# train id -> Cityscapes label id: how predictions are written for the Cityscapes benchmark / cityscapesscripts
TRAIN_TO_CITYSCAPES_ID = np.array([raw for raw, _ in sorted(CITYSCAPES_ID_TO_TRAIN.items(), key=lambda kv: kv[1])],
                                  dtype=np.uint8)
CITYSCAPES_LUT[:34][CITYSCAPES_LUT[:34] == UNDEFINED] = IGNORE_INDEX

# SYNTHIA RAND-CITYSCAPES class ids (0..22, from its README) -> train ids. This is the usual mapping
# of DG/DA work: void (0), parking-slot (13), road-work (14) and lane-marking (22) -> 255. Terrain,
# truck and train (16, 18, 20) are listed by SYNTHIA but never occur, so those train ids are absent
# and the mIoU over SYNTHIA is the customary 16-class mIoU (absent classes are excluded).
SYNTHIA_ID_TO_TRAIN = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
    18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
SYNTHIA_LUT = make_lut(SYNTHIA_ID_TO_TRAIN, 65536, default=UNDEFINED)
SYNTHIA_LUT[[0, 13, 14, 22]] = IGNORE_INDEX

# Mapillary Vistas v1.2: the 66 classes in id order (config_v1.2.json) with their label colours.
MAPILLARY_CLASSES = (
    ("animal--bird", (165, 42, 42)), ("animal--ground-animal", (0, 192, 0)),
    ("construction--barrier--curb", (196, 196, 196)), ("construction--barrier--fence", (190, 153, 153)),
    ("construction--barrier--guard-rail", (180, 165, 180)),
    ("construction--barrier--other-barrier", (90, 120, 150)),
    ("construction--barrier--wall", (102, 102, 156)), ("construction--flat--bike-lane", (128, 64, 255)),
    ("construction--flat--crosswalk-plain", (140, 140, 200)),
    ("construction--flat--curb-cut", (170, 170, 170)), ("construction--flat--parking", (250, 170, 160)),
    ("construction--flat--pedestrian-area", (96, 96, 96)),
    ("construction--flat--rail-track", (230, 150, 140)), ("construction--flat--road", (128, 64, 128)),
    ("construction--flat--service-lane", (110, 110, 110)),
    ("construction--flat--sidewalk", (244, 35, 232)), ("construction--structure--bridge", (150, 100, 100)),
    ("construction--structure--building", (70, 70, 70)),
    ("construction--structure--tunnel", (150, 120, 90)), ("human--person", (220, 20, 60)),
    ("human--rider--bicyclist", (255, 0, 0)), ("human--rider--motorcyclist", (255, 0, 100)),
    ("human--rider--other-rider", (255, 0, 200)), ("marking--crosswalk-zebra", (200, 128, 128)),
    ("marking--general", (255, 255, 255)), ("nature--mountain", (64, 170, 64)),
    ("nature--sand", (230, 160, 50)), ("nature--sky", (70, 130, 180)), ("nature--snow", (190, 255, 255)),
    ("nature--terrain", (152, 251, 152)), ("nature--vegetation", (107, 142, 35)),
    ("nature--water", (0, 170, 30)), ("object--banner", (255, 255, 128)), ("object--bench", (250, 0, 30)),
    ("object--bike-rack", (100, 140, 180)), ("object--billboard", (220, 220, 220)),
    ("object--catch-basin", (220, 128, 128)), ("object--cctv-camera", (222, 40, 40)),
    ("object--fire-hydrant", (100, 170, 30)), ("object--junction-box", (40, 40, 40)),
    ("object--mailbox", (33, 33, 33)), ("object--manhole", (100, 128, 160)),
    ("object--phone-booth", (142, 0, 0)), ("object--pothole", (70, 100, 150)),
    ("object--street-light", (210, 170, 100)), ("object--support--pole", (153, 153, 153)),
    ("object--support--traffic-sign-frame", (128, 128, 128)),
    ("object--support--utility-pole", (0, 0, 80)), ("object--traffic-light", (250, 170, 30)),
    ("object--traffic-sign--back", (192, 192, 192)), ("object--traffic-sign--front", (220, 220, 0)),
    ("object--trash-can", (140, 140, 20)), ("object--vehicle--bicycle", (119, 11, 32)),
    ("object--vehicle--boat", (150, 0, 255)), ("object--vehicle--bus", (0, 60, 100)),
    ("object--vehicle--car", (0, 0, 142)), ("object--vehicle--caravan", (0, 0, 90)),
    ("object--vehicle--motorcycle", (0, 0, 230)), ("object--vehicle--on-rails", (0, 80, 100)),
    ("object--vehicle--other-vehicle", (128, 64, 64)), ("object--vehicle--trailer", (0, 0, 110)),
    ("object--vehicle--truck", (0, 0, 70)), ("object--vehicle--wheeled-slow", (0, 0, 192)),
    ("void--car-mount", (32, 32, 32)), ("void--ego-vehicle", (120, 10, 10)),
    ("void--unlabeled", (0, 0, 0)),
)

# Mapillary v1.2 name -> train id, following Cityscapes' class definitions: flat drivable surfaces and
# their markings/manholes are road; curbs and pedestrian areas are sidewalk; street lights, utility
# poles and sign frames are pole; riders of any vehicle are rider; sand is terrain. Classes Cityscapes
# itself ignores (parking, rail track, guard rail, bridge, tunnel, caravan, trailer, sign backs, ...)
# and all other objects map to 255.
MAPILLARY_NAME_TO_TRAIN = {
    "construction--flat--road": 0, "construction--flat--bike-lane": 0,
    "construction--flat--crosswalk-plain": 0, "construction--flat--service-lane": 0,
    "marking--crosswalk-zebra": 0, "marking--general": 0, "object--manhole": 0,
    "object--catch-basin": 0, "object--pothole": 0,
    "construction--flat--sidewalk": 1, "construction--flat--curb-cut": 1,
    "construction--flat--pedestrian-area": 1, "construction--barrier--curb": 1,
    "construction--structure--building": 2, "construction--barrier--wall": 3,
    "construction--barrier--fence": 4,
    "object--support--pole": 5, "object--support--utility-pole": 5, "object--street-light": 5,
    "object--support--traffic-sign-frame": 5,
    "object--traffic-light": 6, "object--traffic-sign--front": 7, "nature--vegetation": 8,
    "nature--terrain": 9, "nature--sand": 9, "nature--sky": 10, "human--person": 11,
    "human--rider--bicyclist": 12, "human--rider--motorcyclist": 12, "human--rider--other-rider": 12,
    "object--vehicle--car": 13, "object--vehicle--truck": 14, "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16, "object--vehicle--motorcycle": 17, "object--vehicle--bicycle": 18,
}
_MAPILLARY_NAMES = [name for name, _ in MAPILLARY_CLASSES]
MAPILLARY_LUT = make_lut({_MAPILLARY_NAMES.index(n): t for n, t in MAPILLARY_NAME_TO_TRAIN.items()}, 256,
                         default=UNDEFINED)
MAPILLARY_LUT[:len(MAPILLARY_CLASSES)][MAPILLARY_LUT[:len(MAPILLARY_CLASSES)] == UNDEFINED] = IGNORE_INDEX
MAPILLARY_PALETTE = np.array([color for _, color in MAPILLARY_CLASSES], dtype=np.uint8)

# Train-id labels (folder export, BDD100K): 0..18 and 255 are valid, everything else is corrupt.
TRAIN_ID_LUT = make_lut({i: i for i in range(NUM_CLASSES)}, 256, default=UNDEFINED)
TRAIN_ID_LUT[IGNORE_INDEX] = IGNORE_INDEX


def colorize(label):
    """(H, W) train-id array -> (H, W, 3) uint8 Cityscapes colours; 255 (ignore) is black."""
    label = np.asarray(label)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = PALETTE
    return table[label.astype(np.int64).clip(0, 255)]


def rgb_to_ids(rgb, palette):
    """(H, W, 3) colour-coded label -> (H, W) ids by exact palette match; unknown colours -> -1."""
    rgb = np.asarray(rgb, dtype=np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal = palette.astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_codes)
    pos = np.searchsorted(pal_codes[order], codes).clip(0, len(pal_codes) - 1)
    ids = order[pos]
    return np.where(pal_codes[ids] == codes, ids, -1)
