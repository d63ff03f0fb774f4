"""Compressed uplinks of the server mode (Ghosh et al., Algorithms 1-3; signSGD with majority vote).

What an agent rank does to its hosted agents' messages before the gather,
and what the server does to the bytes it gathers, when ``[compression]``
is on (:func:`active`). The codecs themselves are :mod:`mpisim.compression`
(pure); this module only applies them, with the agents' memories and
generators, to the rows of a rank's send block. No MPI here: the server
protocol moves the payloads.

Agent side, per round, for the rank's a hosted agents at once:

1. x = the messages after the faults (a faulty agent compresses whatever
   its fault produced: the restricted adversary of Algorithm 1);
2. error feedback (Algorithm 3): x <- eta_t x + e (each agent's memory e,
   a row of one (a, d) block);
3. payload = encode(x), with each agent's own generator for a stochastic
   codec (stream (COMPRESS, id), so packing never changes a draw);
4. error feedback: e <- x - decode(payload), what was not sent;
5. faulty agents multiply the payload's norm field (the side norm, or the
   codec's own scale) by ``compression.faulty_norm`` (1: truthful).

Server side: decode the (n, B) payloads into the (n, d) block the rule
sees, and read the sent norms when the payloads carry a side norm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import compression, seeding
from .state import Agent


def active(cfg) -> bool:
    """Whether the agents' messages go through a codec (else they travel as raw float32 rows)."""
    c = getattr(cfg, "compression", None)
    return c is not None and (c.codec != "none" or c.side_norm > 0 or c.error_feedback
                              or c.faulty_norm != 1.0)


def build_codec(cfg) -> compression.Codec:
    """The codec of ``[compression]``: Q, with the side norm ||x||_q in front when side_norm = q."""
    c = cfg.compression
    codec = compression.REGISTRY[c.codec](**dict(c.params))
    return compression.with_side_norm(codec, c.side_norm) if c.side_norm else codec


class AgentUplink:
    """The compressed messages of one rank's hosted agents (rows in the rank's agent order)."""

    def __init__(self, cfg, agents: Sequence[Agent], d: int, *, step_size: Callable[[int], float]):
        c = cfg.compression
        self.codec = build_codec(cfg)
        self.d = d
        self.step_size = step_size
        self.payload = np.empty((len(agents), self.codec.nbytes(d)), dtype=np.uint8)
        self.rngs = None
        if self.codec.stochastic:
            self.rngs = [seeding.torch_generator(cfg.run.seed, seeding.COMPRESS, a.id) for a in agents]
            for agent, rng in zip(agents, self.rngs):
                agent.codec_rng = rng
        self.error = None
        if c.error_feedback:
            self.error = torch.zeros((len(agents), d))
            for j, agent in enumerate(agents):
                agent.memory["error"] = self.error[j]  # a view: saved and restored in place
        self.liars = [j for j, a in enumerate(agents) if a.faulty] if c.faulty_norm != 1.0 else []
        self.faulty_norm = c.faulty_norm

    def encode(self, messages: torch.Tensor, t: int) -> np.ndarray:
        """The payloads of round t (1-based) for the rows ``messages`` (a, d); changes ``messages``
        in place under error feedback (it becomes p = eta_t g + e)."""
        if self.error is not None:
            messages.mul_(self.step_size(t - 1)).add_(self.error)
        self.codec.encode_rows(messages, rngs=self.rngs, out=self.payload)
        if self.error is not None:
            self.codec.decode_rows(self.payload, self.d, out=self.error)
            torch.sub(messages, self.error, out=self.error)
        if self.liars:
            rows = self.payload[self.liars]
            compression.write_norm_field(rows, compression.read_norm_field(rows) * np.float32(self.faulty_norm))
            self.payload[self.liars] = rows
        return self.payload


class ServerUplink:
    """The server's side: the gathered (n, B) payloads, decoded into the rule's (n, d) block."""

    def __init__(self, cfg, n: int, d: int):
        self.codec = build_codec(cfg)
        self.d = d
        self.side_norm = cfg.compression.side_norm
        self.received = np.empty((n, self.codec.nbytes(d)), dtype=np.uint8)
        self.norms: torch.Tensor | None = None  # this round's sent norms (side_norm only)

    def decode(self, out: torch.Tensor) -> None:
        """Decode this round's payloads into ``out`` (n, d); keep the sent norms if any."""
        self.codec.decode_rows(self.received, self.d, out=out)
        if self.side_norm:
            self.norms = torch.from_numpy(compression.read_norm_field(self.received).copy())
