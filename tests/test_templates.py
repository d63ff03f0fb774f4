"""The templates a newcomer copies (templates/): they load as plugins and the rule passes the test kit."""

import torch

from conftest import ROOT
from mpisim import plugins, registry, testing
from mpisim.rules import attacks


def test_the_templates_load_and_the_rule_passes_every_property():
    loaded = plugins.load([str(ROOT / "templates" / name) for name in ("rule_template.py", "attack_template.py")])
    try:
        assert [p.sha256 != "" for p in loaded] == [True, True]
        report = testing.check_rule("my_trimmed_mean", n=11, f=2, params={"trim": 1})
        assert report.ok, report.table()
        assert registry.rules.entry("my_trimmed_mean").properties["coordinatewise"] is True
        attack = registry.attacks["my_shifted_mean"]
        honest = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
        sent = attack.fn(torch.zeros(2, 5), honest=honest, f=2, rngs=[None, None], z=1.0)
        assert sent.shape == (2, 5) and torch.equal(sent[0], sent[1])
        assert attacks.check("my_shifted_mean", 10, 2, {"z": -1.0}) == "my_shifted_mean: z must be >= 0, got -1.0"
    finally:
        registry.rules.remove("my_trimmed_mean")
        registry.attacks.remove("my_shifted_mean")
