import json
import pickle

import numpy as np
import pytest

from orderopt import orders as o
from orderopt.orders import DecodingOrder


def drawn(*rows: str) -> np.ndarray:
    """A hand-drawn mask: 'x' visible, '.' hidden."""
    return np.array([[ch == "x" for ch in row] for row in rows])


# --- hand-drawn masks -------------------------------------------------------------
CHECKER_ODD_5 = drawn(".x.x.", "x.x.x", ".x.x.", "x.x.x", ".x.x.")
CHECKER_ODD_7 = drawn(".x.x.x.", "x.x.x.x", ".x.x.x.", "x.x.x.x", ".x.x.x.", "x.x.x.x", ".x.x.x.")


@pytest.mark.parametrize("pos", [(0, 1), (1, 0)])
def test_checkerboard_masks(pos):
    cb = o.checkerboard()
    assert not cb.kernel_mask(0, 0, 5).any() and not cb.kernel_mask(1, 1, 7).any()
    np.testing.assert_array_equal(cb.kernel_mask(*pos, 5), CHECKER_ODD_5)
    np.testing.assert_array_equal(cb.kernel_mask(*pos, 7), CHECKER_ODD_7)


def test_raster_2x2_masks_kernel_5():
    r = o.raster(2)
    assert not r.kernel_mask(0, 0, 5).any()
    np.testing.assert_array_equal(r.kernel_mask(0, 1, 5), drawn(".x.x.", ".....", ".x.x.", ".....", ".x.x."))
    np.testing.assert_array_equal(r.kernel_mask(1, 0, 5), drawn(".....", "xxxxx", ".....", "xxxxx", "....."))
    np.testing.assert_array_equal(r.kernel_mask(1, 1, 5), drawn(".x.x.", "xxxxx", ".x.x.", "xxxxx", ".x.x."))


def test_raster_2x2_masks_kernel_7():
    r = o.raster(2)
    np.testing.assert_array_equal(
        r.kernel_mask(0, 1, 7),
        drawn(".......", "x.x.x.x", ".......", "x.x.x.x", ".......", "x.x.x.x", "......."),
    )
    np.testing.assert_array_equal(
        r.kernel_mask(1, 1, 7),
        drawn("xxxxxxx", "x.x.x.x", "xxxxxxx", "x.x.x.x", "xxxxxxx", "x.x.x.x", "xxxxxxx"),
    )


def test_paper_4x4_masks():
    p = o.paper_order(4)
    # (1, 1) is stage 7: sees stages 0..6 = row 0, column 0 except (3, 0)... see drawing.
    np.testing.assert_array_equal(p.kernel_mask(1, 1, 5), drawn(".x...", "xxxxx", ".x...", ".x...", ".x..."))
    np.testing.assert_array_equal(
        p.kernel_mask(1, 1, 7),
        drawn("..x...x", "..x...x", "xxxxxxx", "..x...x", "..x...x", "..x...x", "xxxxxxx"),
    )
    # (2, 3) is stage 10.
    np.testing.assert_array_equal(p.kernel_mask(2, 3, 5), drawn("xxxxx", "x.xxx", "...x.", "..xx.", "xxxxx"))
    np.testing.assert_array_equal(
        p.kernel_mask(2, 3, 7),
        drawn("x..xx..", "xxxxxxx", "xx.xxx.", "x...x..", "x..xx..", "xxxxxxx", "xx.xxx."),
    )


def test_kernel_masks_stack_and_centre_never_visible():
    order = o.random_order(3, seed=1)
    masks = order.kernel_masks(5)
    assert masks.shape == (3, 3, 5, 5)
    assert not masks[:, :, 2, 2].any()
    np.testing.assert_array_equal(masks[2, 1], order.kernel_mask(2, 1, 5))
    with pytest.raises(ValueError, match="odd"):
        order.kernel_mask(0, 0, 4)
    with pytest.raises(ValueError, match="outside"):
        order.kernel_mask(3, 0)


def test_hyperprior_sees_nothing():
    assert not o.hyperprior_only().kernel_masks(5).any()


# --- structure ----------------------------------------------------------------------
def test_properties_and_schedule():
    p = o.paper_order(2)
    assert p.patch == 2 and p.num_stages == 4 and p.is_full
    np.testing.assert_array_equal(p.stages, [[0, 1], [2, 3]])
    assert p.stage_positions(2) == ((1, 0),)
    assert p.decoded_before(0) == frozenset()
    assert p.decoded_before(3) == {(0, 0), (0, 1), (1, 0)}
    cb = o.checkerboard()
    assert not cb.is_full and cb.stage_positions(1) == ((0, 1), (1, 0))
    assert cb.schedule() == [(frozenset(), ((0, 0), (1, 1))), (frozenset({(0, 0), (1, 1)}), ((0, 1), (1, 0)))]


def test_stage_map_tiles_and_crops():
    m = o.paper_order(2).stage_map(3, 5)
    np.testing.assert_array_equal(m, [[0, 1, 0, 1, 0], [2, 3, 2, 3, 2], [0, 1, 0, 1, 0]])
    assert o.paper_order(4).stage_map(8, 8)[5, 6] == o.paper_order(4).stage_of(1, 2)


def test_stages_is_a_copy_and_order_immutable():
    p = o.raster(2)
    p.stages[0, 0] = 9
    assert p.stage_of(0, 0) == 0
    with pytest.raises(AttributeError):
        p.foo = 1


def test_from_sequence_positions_groups_and_flat():
    assert DecodingOrder.from_sequence([0, 1, 2, 3], 2) == o.raster(2)
    assert DecodingOrder.from_sequence([[(0, 0), (1, 1)], [(0, 1), (1, 0)]], 2) == o.checkerboard()
    assert DecodingOrder.from_sequence(o.paper_order(4).sequence(), 4) == o.paper_order(4)
    with pytest.raises(ValueError, match="twice"):
        DecodingOrder.from_sequence([0, 0, 1, 2], 2)
    with pytest.raises(ValueError, match="never decoded"):
        DecodingOrder.from_sequence([0, 1, 2], 2)
    with pytest.raises(ValueError, match="outside"):
        DecodingOrder.from_sequence([(0, 0), (0, 1), (1, 0), (2, 2)], 2)


def test_published_and_random():
    assert str(o.tinylic_order()) == "0,2;3,1"
    assert set(o.published_orders(2)) == {"raster", "paper", "tinylic"}
    assert set(o.published_orders(3)) == {"raster"}
    assert o.random_order(4, seed=3) == o.random_order(4, seed=3)
    assert o.random_order(4, seed=3).is_full
    with pytest.raises(ValueError, match="patch 2 and 4"):
        o.paper_order(3)


# --- enumeration and symmetry ---------------------------------------------------------
@pytest.mark.parametrize("k,count", [(1, 1), (2, 24), (3, 362880)])
def test_enumeration_counts(k, count):
    it = o.enumerate_orders(k)
    assert iter(it) is it  # lazy
    if k < 3:
        orders = list(it)
        assert len(orders) == count == len(set(orders)) and all(x.is_full for x in orders)
    else:
        assert sum(1 for _ in it) == count


def test_enumeration_is_lazy_for_4x4():
    first = next(o.enumerate_orders(4))
    assert first == o.raster(4)


def test_three_2x2_classes():
    classes = o.symmetry_classes(2)
    assert len(classes) == 3 and all(len(m) == 8 for m in classes.values())
    rep = {str(c) for c in classes}
    # raster-like (Z), diagonal-first (TinyLIC), and U-shaped (around the patch).
    assert o.raster(2).canonical() in classes and o.tinylic_order().canonical() in classes
    assert o.raster(2).canonical() != o.tinylic_order().canonical()
    u_shape = DecodingOrder.parse("0,1;3,2").canonical()
    assert u_shape not in {o.raster(2).canonical(), o.tinylic_order().canonical()}
    assert len(rep) == 3


def test_symmetries_of_checkerboard_collapse():
    assert set(o.checkerboard().symmetries()) == {o.checkerboard(), DecodingOrder([[1, 0], [0, 1]])}
    s = o.paper_order(4).symmetries()
    assert len(s) == 8 and len(set(s)) == 8 and s[0] == o.paper_order(4)
    assert all(x.canonical() == s[0].canonical() for x in s)


# --- round trips -----------------------------------------------------------------------
@pytest.mark.parametrize("order", [o.raster(3), o.checkerboard(), o.hyperprior_only(), o.paper_order(4)])
def test_round_trips(order):
    assert DecodingOrder.parse(str(order)) == order == DecodingOrder(str(order))
    assert DecodingOrder.from_json(order.to_json()) == order
    assert DecodingOrder.from_json(json.loads(order.to_json())) == order
    assert pickle.loads(pickle.dumps(order)) == order
    assert hash(DecodingOrder(order.stages)) == hash(order)
    assert eval(repr(order), {"DecodingOrder": DecodingOrder}) == order


def test_json_exports_masks():
    d = json.loads(o.checkerboard().to_json(kernel_size=5))
    assert d["order"] == "0,1;1,0" and d["num_stages"] == 2
    np.testing.assert_array_equal(np.array(d["masks"][0][1], bool), CHECKER_ODD_5)


def test_parse_tolerates_spaces():
    assert DecodingOrder.parse(" 0, 1 ; 2 ,3 ") == o.raster(2)


# --- validation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad,message",
    [
        ([], "empty"),
        ([[]], "empty"),
        ([[0, 1], [2]], "different lengths"),
        ([[0, 1, 2], [3, 4, 5]], "square"),
        ([[0, 1], [3, 3]], "missing \\[2\\]"),
        ([[0, 1], [3, 4]], "stage number 4 is out of range"),
        ([[0, 1], [2, 10**11]], "stage number 100000000000 is out of range"),
        ([[0, -1], [1, 2]], ">= 0"),
        ([[0, 1.5], [2, 3]], "integers"),
        ([[0, "1"], [2, 3]], "integers"),
        ([[0, True], [2, 3]], "integers"),
        (np.zeros((2, 2, 1), int), "2-D"),
        (np.array([[0.0, 1.0], [2.0, 3.0]]), "integers"),
        (5, "sequence of rows"),
        ("0,1;2", "lengths"),
    ],
)
def test_invalid_orders(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        DecodingOrder(bad)
    shown = bad.tolist() if isinstance(bad, np.ndarray) else bad
    if isinstance(bad, str):
        shown = [[0, 1], [2]]
    assert repr(shown) in str(err.value)  # the message shows the offending input


@pytest.mark.parametrize("text", ["", "0,1;2", "a,b", "0,,1", "0;1;", "0.5", "[[0]]"])
def test_unparsable_text(text):
    with pytest.raises(ValueError, match="parse|lengths|square") as err:
        DecodingOrder.parse(text)
    assert repr(text) in str(err.value) or "lengths" in str(err.value)


@pytest.mark.parametrize("bad", ["{", '{"x": 1}', '"0,1"'])
def test_invalid_json(bad):
    if bad == '"0,1"':
        with pytest.raises(ValueError, match="square"):
            DecodingOrder.from_json(bad)
    else:
        with pytest.raises(ValueError, match="JSON"):
            DecodingOrder.from_json(bad)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_patch_sizes(k):
    with pytest.raises(ValueError, match="positive integer"):
        o.raster(k)
