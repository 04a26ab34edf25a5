"""Speculative decoding: proposers guess a sequence's next tokens; the target model checks them all
in one step (scheduler → model_input → sample_step), accepting exactly what it would have sampled."""
from livecast.engine.spec.proposer import Proposer, make_proposer
from livecast.engine.spec.speculator import SpecState, Speculator

__all__ = ["Proposer", "make_proposer", "SpecState", "Speculator"]
