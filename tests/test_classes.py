from carparts.classes import CARPARTS, Taxonomy, mirror_name
from tests.conftest import CATEGORIES


def test_mirror_name_swaps_whole_words_only():
    assert mirror_name("front_left_door") == "front_right_door"
    assert mirror_name("right_mirror") == "left_mirror"
    assert mirror_name("hood") == "hood"
    assert mirror_name("leftover") == "leftover"


# the car-parts classes by index, written out (SOURCE.md's COCO ids 2..19 are indices 1..18)
NAMES = (
    "background", "back_bumper", "back_glass", "back_left_door", "back_left_light", "back_right_door",
    "back_right_light", "front_bumper", "front_glass", "front_left_door", "front_left_light", "front_right_door",
    "front_right_light", "hood", "left_mirror", "right_mirror", "tailgate", "trunk", "wheel",
)  # fmt: skip
# what each part is called in a mirror image; every class not listed stays itself
MIRRORED = {
    "back_left_door": "back_right_door", "back_right_door": "back_left_door",
    "back_left_light": "back_right_light", "back_right_light": "back_left_light",
    "front_left_door": "front_right_door", "front_right_door": "front_left_door",
    "front_left_light": "front_right_light", "front_right_light": "front_left_light",
    "left_mirror": "right_mirror", "right_mirror": "left_mirror",
}  # fmt: skip


def test_carparts_index_convention():
    assert CARPARTS.names == NAMES
    assert CARPARTS.category_ids == (None, *range(2, 20))
    assert CARPARTS.category_to_index() == {category_id: category_id - 1 for category_id in range(2, 20)}
    assert CARPARTS.num_classes == 19


def test_flip_permutation_is_the_full_mirror_table():
    perm = CARPARTS.flip_permutation
    assert {NAMES[i]: NAMES[perm[i]] for i in range(19)} == {name: MIRRORED.get(name, name) for name in NAMES}
    assert perm == (0, 1, 2, 5, 6, 3, 4, 7, 8, 11, 12, 9, 10, 13, 15, 14, 16, 17, 18)
    assert CARPARTS.left_right_pairs == [(3, 5), (4, 6), (9, 11), (10, 12), (14, 15)]


def test_from_coco_categories_skips_background_and_sorts_by_id():
    shuffled = list(reversed(CATEGORIES))
    taxonomy = Taxonomy.from_coco_categories(shuffled)
    assert taxonomy == CARPARTS


def test_generic_taxonomy_gets_distinct_colours_and_round_trips():
    taxonomy = Taxonomy.from_coco_categories([{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}])
    assert taxonomy.names == ("background", "dog", "cat")
    assert taxonomy.category_ids == (None, 3, 7)
    assert len(set(taxonomy.colours)) == 3
    assert Taxonomy.from_dict(taxonomy.to_dict()) == taxonomy
