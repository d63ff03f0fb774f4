"""The robust one-round algorithm (Yin et al. 2018, Algorithm 2).

Rank 0 is the master, ranks 1.. host the workers (``agents.per_rank``
each). In its single round every normal worker computes its local
empirical risk minimiser over its whole shard (:mod:`mpisim.learning.erm`:
the exact solution for least squares, L-BFGS to ``erm.tol`` on the gradient
norm otherwise) and sends it once; the master aggregates the m models with
``aggregator.name`` (``median``: Algorithm 2; ``mean``: the non-robust
one-round average of Zhang et al. 2012; any rule of the library) and that
aggregate is the model. Nothing is broadcast. Byzantine workers run any
fault of the library: a data fault (``random_labels``, Section 7's, or
``label_flip``) changes the labels they train on; a message fault replaces
the model they send (colluding ones through the agents' communicator, as in
the server mode).

The round, the gather into one (m, d) buffer, the faults and the byte
counts are the server mode's (:mod:`.server`), composed with a downlink that
sends nothing (:meth:`Master.downlink`), a step that replaces the model by
the aggregate (:meth:`Master.stepper`), and workers that compute their ERM
(:meth:`ErmHost.compute`).
"""

from __future__ import annotations

import torch

from ..learning import erm
from ..mpi import comm as mpi
from . import driver
from .one_round_config import OneRoundConfig, validate_one_round
from .server import SERVER, AgentHost, ServerMode, ServerPlan, ServerRole, _nothing


class OneRound(ServerMode):
    mode = "one_round"
    config_class = OneRoundConfig
    prog = "python -m mpisim.one_round"
    description = "The robust one-round algorithm: every worker sends its local ERM once, the master aggregates."
    validate = staticmethod(validate_one_round)

    @classmethod
    def run_name(cls, cfg: OneRoundConfig, plan: ServerPlan) -> list[str]:
        return ["one_round", *super().run_name(cfg, plan)[1:]]

    @classmethod
    def create(cls, world: mpi.Comm, cfg: OneRoundConfig, plan: ServerPlan) -> driver.Role:
        rank = world.Get_rank()
        agents_comm = mpi.split(world, None if rank == SERVER else 1, key=rank)  # every rank calls Split
        if rank == SERVER:  # one gather: the collectives (no windows to set up for one round)
            return Master(world, cfg, plan, "collectives")
        return ErmHost(world, agents_comm, cfg, plan, "collectives")

    @classmethod
    def headline(cls, s: dict) -> str:
        byz = s["byzantine_ids"]
        return (f"mpisim one-round: {s['n']} workers' local ERMs on {s['world_size'] - 1} agent ranks, "
                f"aggregated by {s['aggregator']} (f={s['f']}), fault {s['fault']}"
                + (f" on workers {byz}" if byz else ""))


class Master(ServerRole):
    """Rank 0: gather the m local minimisers, aggregate them; the aggregate is the model."""

    def downlink(self, cfg):
        return _nothing, _nothing  # nothing is broadcast

    def stepper(self, cfg):
        def replace(filtered: torch.Tensor, t: int) -> None:  # no step: the aggregate is the model
            self.state.model.copy_(filtered)

        return replace

    def summary(self, final: dict, diverged: bool) -> dict:
        solved = {int(i): info for r in self.ranks for i, info in r.get("erm", {}).items()}
        honest = [solved[i] for i in self.plan.honest]
        return {**super().summary(final, diverged), "erm": [solved[i] for i in sorted(solved)],
                "erm_max_grad_norm_honest": max(e["grad_norm"] for e in honest),
                "erm_all_converged_honest": all(e["converged"] for e in honest)}

    def describe(self, s: dict) -> list[str]:
        method = "exact solve" if self.cfg.model.name == "least_squares" and self.cfg.erm.method == "auto" \
            else f"L-BFGS to gradient norm {self.cfg.erm.tol:g}"
        lines = [f"local ERMs ({method}, l2 = {self.cfg.erm.l2:g}): largest honest final gradient norm "
                 f"{s['erm_max_grad_norm_honest']:.3g}"
                 + ("" if s["erm_all_converged_honest"] else
                    f", NOT converged for some within erm.max_iter = {self.cfg.erm.max_iter}")]
        return lines + super().describe(s)

    def _divergence_hint(self, s: dict) -> str:
        if s["aggregator"] == "mean" and s["byzantine_ids"]:
            return super()._divergence_hint(s)
        return "a local ERM is not finite: add a penalty (--erm.l2) or check the workers' data"


class ErmHost(AgentHost):
    """An agent rank: each hosted worker's local ERM over its whole shard, sent once."""

    def downlink(self, cfg):
        return _nothing, _nothing  # the workers start from nothing the master sends

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results: dict[int, dict] = {}

    def compute(self) -> None:
        cfg = self.cfg.erm
        exact = None if cfg.method == "auto" else False
        for j, (agent, (x, y)) in enumerate(zip(self.agents.values(), self._batches(whole=True))):
            result = erm.minimise(self.model, x, y, l2=cfg.l2, tol=cfg.tol, max_iter=cfg.max_iter,
                                  exact=exact)
            self.send_rows[j].copy_(result.w)
            agent.losses.add(result.loss)
            self.results[agent.id] = result.as_dict()  # the true ERM, before any message fault

    def report(self) -> dict:
        return {"erm": self.results}

    # The ERMs' figures belong to the run's state: a run resumed after its one round (a checkpoint
    # at round 1) reports them as the uninterrupted run does.
    def state_dict(self) -> dict:
        return {**super().state_dict(), "erm": self.results}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.results = {int(i): dict(info) for i, info in state["erm"].items()}
