"""The Literal types of the string options (ferromem/_typing.py) name exactly the values
the run-time checks accept (ferromem/_validate.py)."""

from typing import get_args

from ferromem import _typing, _validate


def test_the_option_literals_match_the_accepted_values():
    assert get_args(_typing.Durability) == _validate.DURABILITIES
    assert get_args(_typing.EngineChoice) == _validate.ENGINES
    assert get_args(_typing.IndexMode) == _validate.INDEX_MODES
    assert get_args(_typing.Precision) == _validate.PRECISIONS
