"""The controller's ClusterRole rules: merged deterministically, and the chart's copy is current."""

from __future__ import annotations

import pytest
import yaml

from cdi.controller import permissions
from cdi.controller.permissions import RULES_FILE, Rule, cluster_rules, merge


def test_the_charts_rules_file_is_generated_from_permissions_py() -> None:
    assert RULES_FILE.read_text() == permissions.render(), "run: python -m cdi.controller.permissions"
    assert permissions.main(["--check"]) == 0


def test_merge_unions_verbs_per_resource_and_groups_resources_with_equal_verbs() -> None:
    rules = merge([Rule("", ("pods",), ("get",)), Rule("", ("pods", "secrets"), ("create",)),
                   Rule("", ("services",), ("get", "create")), Rule("x.io", ("things",), ("get",))])
    assert rules == [
        {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["create", "get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": ["x.io"], "resources": ["things"], "verbs": ["get"]},
    ]


def test_least_privilege_no_wildcards_and_no_rbac_or_node_writes() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text())
    assert rules == cluster_rules()
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"], r
        assert r["apiGroups"] != ["rbac.authorization.k8s.io"], r
        assert "nodes" not in r["resources"], r


def test_a_subset_of_controllers_gets_only_their_rules() -> None:
    groups = {g for r in cluster_rules(["datavolume", "upload", "clone"]) for g in r["apiGroups"]}
    assert groups == {"", "cdi.kubevirt.io", "storage.k8s.io"}
    with pytest.raises(ValueError, match="nope"):
        cluster_rules(["nope"])
