"""Why the hybrid mesh is slow for ConvMixer: the collective bytes of its compiled train step (no run) under
the default sharding rules and with one rule changed at a time, and for neighbouring meshes; and whether
the rule change that fixes the hybrid costs another mesh (the last variants), also for ResNet-20.
docs/performance.md ("Every strategy, trained") reads it; one line per variant:

    python experiments/hybrid_rules.py                   # ~5 min on 2 cores, 8 simulated devices
    python experiments/hybrid_rules.py --model=resnet20  # ResNet-20 at CIFAR-10's shape, batch 128
    python experiments/hybrid_rules.py --smoke           # ConvMixer-16/1 at 8x8, two variants (tests)
"""
import json
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from jaxdist.config import DEFAULT_RULES  # noqa: E402
from jaxdist.parallel import collectives  # noqa: E402
from jaxdist.train import loop  # noqa: E402

HYBRID = dict(data=2, fsdp=2, model=2)


def collective_mib(rules, mesh: dict, smoke: bool = False, model: str = "convmixer") -> dict:
    """experiments/strategies.py's ConvMixer-64/8 at 16x16 (`smoke`: ConvMixer-16/1 at 8x8), or
    experiments/strategies.sh's ResNet-20 (synthetic 32x32x3, batch 128), compiled for `mesh` under `rules`."""
    if model == "resnet20":
        c = runpy.run_path(os.path.join(REPO, "configs", "cifar_dp.py"))["get_config"]()
        c.model.name, c.data.name, c.batch_size = "resnet20", "synthetic", 128
    else:
        c = runpy.run_path(os.path.join(REPO, "configs", "digits_dp.py"))["get_config"]()
        c.model.name, c.model.dim, c.model.depth, c.model.patch_size, c.model.kernel_size = (
            ("convmixer", 16, 1, 2, 3) if smoke else ("convmixer", 64, 8, 2, 5))
        c.data.image_size = 8 if smoke else 16
    c.mesh.update({**dict(stage=1, data=1, fsdp=1, spatial=1, model=1), **mesh})
    c.sharding_rules = rules
    exp = loop.build_experiment(c)
    moved = collectives.collective_bytes(loop.compile_train_step(exp)["step"].as_text())
    return {kind: round(n / 2**20, 2) for kind, n in moved.items() if n}


def with_rule(**changed):
    return tuple((name, changed.get(name, axes)) for name, axes in DEFAULT_RULES)


if __name__ == "__main__":
    smoke = sys.argv[1:] == ["--smoke"]
    model = "resnet20" if sys.argv[1:] == ["--model=resnet20"] else "convmixer"
    if sys.argv[1:] and not smoke and model == "convmixer":
        sys.exit("usage: python experiments/hybrid_rules.py [--smoke | --model=resnet20]")
    variants = [("default rules", DEFAULT_RULES, HYBRID),
                ("conv_in -> None", with_rule(conv_in=None), HYBRID),
                ("conv_out -> model", with_rule(conv_out="model"), HYBRID),
                ("batch -> data", with_rule(batch="data"), HYBRID),
                ("default rules", DEFAULT_RULES, dict(data=2, fsdp=4)),
                ("default rules", DEFAULT_RULES, dict(fsdp=8)),
                ("default rules", DEFAULT_RULES, dict(data=4, model=2)),
                ("conv_in -> None", with_rule(conv_in=None), dict(fsdp=8)),
                ("default rules", DEFAULT_RULES, dict(fsdp=4, model=2)),
                ("conv_in -> None", with_rule(conv_in=None), dict(fsdp=4, model=2))]
    if model == "resnet20":  # the default and conv_in -> None where they can differ (fsdp with or without model)
        variants = [variants[i] for i in (0, 1, 5, 7, 8, 9)]
    for label, rules, mesh in [variants[0], variants[5]] if smoke else variants:
        print(json.dumps({"model": model, "rules": label, "mesh": mesh,
                          "collective_mib_per_step": collective_mib(rules, mesh, smoke, model)}), flush=True)
