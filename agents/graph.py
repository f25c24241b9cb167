"""The loop as a LangGraph state machine: infer → analyze → generate → validate → label → train → evaluate."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph import END, START, StateGraph

from agents.nodes import LoopContext, make_nodes
from agents.run_dir import STAGE_DIRS
from agents.state import LoopState

STAGES = tuple(STAGE_DIRS)  # in run order


def route_after_evaluate(state: LoopState, iterations: int) -> Literal["infer", "__end__"]:
    """Loop again until the configured number of iterations is done (evaluate advances ``iteration``)."""
    return "infer" if state["iteration"] <= iterations else END


def build_graph(ctx: LoopContext | None, iterations: int, checkpointer: Any = None):
    """Compile the loop. ``ctx`` carries the config, run dir and engines the nodes use."""
    graph = StateGraph(LoopState)
    nodes = make_nodes(ctx)
    for name in STAGES:
        graph.add_node(name, nodes[name])
    graph.add_edge(START, "infer")
    for a, b in zip(STAGES, STAGES[1:]):
        graph.add_edge(a, b)
    graph.add_conditional_edges(
        "evaluate", lambda s: route_after_evaluate(s, iterations), {"infer": "infer", END: END}
    )
    return graph.compile(checkpointer=checkpointer)
