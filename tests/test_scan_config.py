"""Every bad configuration is refused with the field named and the allowed range."""

from __future__ import annotations

import datetime as dt

import pytest
from technic.engine.errors import InvalidConfig
from technic.engine.scan_config import ScanConfig


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"max_symbols": 0}, "max_symbols", "between 1 and"),
        ({"max_symbols": 2_000_000}, "max_symbols", "between 1 and"),
        ({"max_symbols": 5.5}, "max_symbols", "whole number"),
        ({"max_symbols": "10"}, "max_symbols", "whole number"),
        ({"max_symbols": True}, "max_symbols", "whole number"),
        ({"min_tech_rating": -1}, "min_tech_rating", "between 0 and 100"),
        ({"min_tech_rating": 100.5}, "min_tech_rating", "between 0 and 100"),
        ({"min_tech_rating": float("nan")}, "min_tech_rating", "between 0 and 100"),
        ({"min_tech_rating": "high"}, "min_tech_rating", "number"),
        ({"lookback_bars": 5}, "lookback_bars", "between 20 and"),
        ({"account_size": 0}, "account_size", "between 1 and"),
        ({"risk_pct": 0}, "risk_pct", "between 0.01 and 100"),
        ({"risk_pct": 150}, "risk_pct", "between 0.01 and 100"),
        ({"target_rr": 0}, "target_rr", "between 0.1 and 50"),
        ({"bars": 10}, "bars", "between 20 and"),
        ({"provider": "yahoo"}, "provider", "sample, synthetic, csv, polygon, massive"),
        ({"universe": "world"}, "universe", "bundled, market"),
        ({"universe": "market"}, "universe", "needs the polygon provider"),
        ({"trade_style": "scalp"}, "trade_style", "day, swing, position"),
        ({"sectors": "Energy"}, "sectors", "list of strings"),
        ({"sectors": ["Energy", 3]}, "sectors", "non-empty strings"),
        ({"sectors": [""]}, "sectors", "non-empty strings"),
        ({"symbols": [None]}, "symbols", "non-empty strings"),
        ({"symbols": ["A\x00B"]}, "symbols", "control character"),
        ({"sectors": ["Ener\ngy"]}, "sectors", "control character"),
        ({"industries": ["Oil\x85Gas"]}, "industries", "control character"),
        ({"symbols": ["X" * 101]}, "symbols", "at most 100 characters"),
        ({"as_of": "2017-13-45"}, "as_of", "YYYY-MM-DD"),
        ({"as_of": 20170101}, "as_of", "YYYY-MM-DD"),
        ({"provider": "csv"}, "data_dir", "directory"),
        ({"adjusted": "yes"}, "adjusted", "true or false"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict, field: str, fragment: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        ScanConfig(**kwargs)
    assert caught.value.field == field
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_unknown_field_is_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(InvalidConfig) as caught:
        ScanConfig.from_dict({"max_symbol": 5})
    assert caught.value.field == "max_symbol"
    assert "max_symbols" in str(caught.value)


def test_normalises_lists_dates_and_symbols() -> None:
    config = ScanConfig.from_dict(
        {"sectors": [" Energy "], "symbols": ["aapl", "AAPL", "msft"], "as_of": "2017-08-11"}
    )
    assert config.sectors == ("Energy",)
    assert config.symbols == ("AAPL", "MSFT")
    assert config.as_of == dt.date(2017, 8, 11)
    assert config.to_dict()["as_of"] == "2017-08-11"
    assert ScanConfig.from_dict(config.to_dict()) == config
