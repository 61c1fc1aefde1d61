"""instructcraft runtime: the acting agent (imports envs and policies, never train)."""

from __future__ import annotations

from agent.agent import Agent

__all__ = ["Agent"]
