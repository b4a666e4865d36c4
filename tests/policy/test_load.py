"""Loading any policy: readable names of policy files and model folders."""

from __future__ import annotations

import json

from equicare.policy._load import policy_name


def test_distilled_rules_are_named_after_their_source(tmp_path):
    """card/model is named "rules (depth 3) of m_awr", not "model"; anything else keeps its
    file or folder name."""
    model = tmp_path / "card" / "model"
    model.mkdir(parents=True)
    cfg = {"format": "equicare-model", "kind": "tree", "learner": "tree",
           "info": {"distill": {"max_depth": 3},
                    "source": {"path": "models/m_awr", "algo": "awr"}}}
    (model / "config.json").write_text(json.dumps(cfg))
    assert policy_name(model) == "rules (depth 3) of m_awr"
    cfg["info"]["source"] = {"algo": "awr"}
    (model / "config.json").write_text(json.dumps(cfg))
    assert policy_name(model) == "rules (depth 3) of awr"
    net = tmp_path / "m_bc"
    net.mkdir()
    (net / "config.json").write_text(json.dumps({"learner": "bc"}))
    assert policy_name(net) == "m_bc"
    assert policy_name(tmp_path / "policy.parquet") == "policy"
