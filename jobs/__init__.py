"""Auto-dispatch runtime: the dispatcher and reaper ticks run as `python3 -m jobs`.

Runs inside the claude-agent-service image: stdlib, pydantic v2 and httpx only.
"""
