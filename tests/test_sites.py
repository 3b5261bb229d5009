from __future__ import annotations

from types import SimpleNamespace

import pytest

from atlascli.errors import InputError
from atlascli.sites import FEATURE_SITES, STEER_SITES, choose_site


def _al(site: str, layer: int) -> SimpleNamespace:
    return SimpleNamespace(provenance={"subject": "subj", "site": site, "layer": layer})


def test_preference_picks_the_first_fitted_site_and_keeps_order():
    found = [_al("mlp", 3), _al("resid", 6), _al("mlp", 12), _al("resid", 9)]
    site, arts = choose_site(found, None, FEATURE_SITES)
    assert site == "mlp" and [a.provenance["layer"] for a in arts] == [3, 12]
    site, arts = choose_site(found, None, STEER_SITES)
    assert site == "resid" and [a.provenance["layer"] for a in arts] == [6, 9]
    only_mlp = [_al("mlp", 3)]
    assert choose_site(only_mlp, None, STEER_SITES)[0] == "mlp"  # falls back to what is fitted
    assert choose_site([], None, STEER_SITES) == ("resid", [])


def test_explicit_site_wins_and_a_missing_one_says_how_to_fit_it():
    found = [_al("mlp", 3), _al("resid", 6)]
    assert choose_site(found, "mlp", STEER_SITES)[0] == "mlp"
    with pytest.raises(InputError, match=r"no alignment of subj at site mlp_out \(fitted sites: mlp, resid\)") as e:
        choose_site(found, "mlp_out", STEER_SITES)
    assert "atlas fit --subject subj --site mlp_out" in (e.value.hint or "")
    with pytest.raises(InputError, match="unknown site 'attn'"):
        choose_site(found, "attn", FEATURE_SITES)
