from carparts.classes import CARPARTS, Taxonomy, mirror_name
from tests.conftest import CATEGORIES


def test_mirror_name_swaps_whole_words_only():
    assert mirror_name("front_left_door") == "front_right_door"
    assert mirror_name("right_mirror") == "left_mirror"
    assert mirror_name("hood") == "hood"
    assert mirror_name("leftover") == "leftover"


def test_carparts_index_convention():
    assert CARPARTS.names[0] == "background"
    assert CARPARTS.category_ids[1:] == tuple(range(2, 20))
    assert CARPARTS.category_to_index()[2] == 1 and CARPARTS.category_to_index()[19] == 18
    assert CARPARTS.num_classes == 19


def test_flip_permutation_swaps_left_and_right_parts():
    perm = CARPARTS.flip_permutation
    idx = CARPARTS.names.index
    assert perm[idx("front_left_door")] == idx("front_right_door")
    assert perm[idx("back_right_light")] == idx("back_left_light")
    assert perm[idx("left_mirror")] == idx("right_mirror")
    assert perm[idx("hood")] == idx("hood") and perm[0] == 0
    assert all(perm[perm[i]] == i for i in range(CARPARTS.num_classes))
    assert len(CARPARTS.left_right_pairs) == 5


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
