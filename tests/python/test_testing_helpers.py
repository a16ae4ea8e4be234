"""Self-tests of kiln.testing: the helpers must be able to fail."""

import pytest
import torch

from kiln.testing import LAYOUTS, _shuffled, assert_same, check, make_input


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64, torch.bool])
def test_make_input_layouts(layout, dtype):
    x = make_input((6, 7), dtype, layout=layout)
    assert x.shape == (6, 7) and x.dtype == dtype
    assert x.is_contiguous() == (layout == "contiguous")
    if layout == "broadcast":
        assert x.stride()[0] == 0
    if layout == "sliced":
        assert x.storage_offset() > 0 and x.stride()[-1] == 2
    if layout != "broadcast":
        assert x.unique().numel() > 1  # never all one value
    if dtype.is_floating_point:
        assert x.abs().max() <= 1.5


def test_make_input_ranges():
    x = make_input((1000,), torch.float32, low=0.1, high=2.0)
    assert x.min() >= 0.1 and x.max() <= 2.0
    d = make_input((1000,), torch.float32, nonzero=True)
    assert d.abs().min() >= 0.25
    i = make_input((1000,), torch.int32, nonzero=True)
    assert (i != 0).all() and i.min() < 0 < i.max()
    with pytest.raises(ValueError):
        make_input((5,), layout="transposed")


def test_shuffled_keeps_layout_and_changes_values():
    x = make_input((5, 6), layout="transposed")
    y = make_input((5, 6), layout="sliced")
    (xs, ys) = _shuffled((x, y))
    for a, b in ((x, xs), (y, ys)):
        assert a.stride() == b.stride() and a.shape == b.shape and a.storage_offset() == b.storage_offset()
        assert not torch.equal(a, b)


def test_check_detects_wrong_results():
    calls = [0]

    def changes_every_call(x):
        calls[0] += 1
        return x * calls[0]
    with pytest.raises(AssertionError):
        check(changes_every_call, (make_input((4,)),), expect_compiled=False)


def test_check_detects_missing_compilation():
    with pytest.raises(AssertionError, match="cache hit|fell back"):
        check(lambda x: torch.cummax(x, 0).values, (make_input((4,)),))


def test_assert_same_is_dtype_and_structure_strict():
    a = torch.tensor([1.0, 2.0])
    with pytest.raises(AssertionError):
        assert_same(a.double(), a)
    with pytest.raises(AssertionError):
        assert_same((a,), [a])
    with pytest.raises(AssertionError):
        assert_same(torch.tensor([1, 2]), torch.tensor([1, 3]))
    with pytest.raises(AssertionError):
        assert_same(a + 1e-3, a)
    assert_same(torch.tensor([float("nan")]), torch.tensor([float("nan")]))
    with pytest.raises(AssertionError):  # same values, other layout
        assert_same(torch.ones(3, 2).t(), torch.ones(2, 3), check_layout=True)
