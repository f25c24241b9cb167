"""The run-directory contract (docs/run_dir.md): stage folder names and the completion marker.

Shared by the loop, which writes run directories, and the tools that read them (``python -m eval
report``), so neither has to import the other.
"""

from __future__ import annotations

# Stage name -> folder inside iteration_N/, in the order the loop runs them.
STAGE_DIRS = {
    "infer": "A_student_reply",
    "analyze": "B_student_tree",
    "generate": "C_distill_data",
    "validate": "D_validated_data",
    "label": "E_teacher_logits",
    "train": "F_student_model",
    "gate": "G_dev_gate",  # is the trained student adopted? (the dev split; shares G with eval, sorts before it)
    "evaluate": "G_eval",
}
# Written into a stage folder after all of its outputs: {"fingerprint": ..., "summary": {..., "seconds": ...}}.
MARKER = ".done.json"
# The ``stage`` of a record in rejected.jsonl: where a generated item can be lost, in pipeline order
# (parse: every generation attempt for the request failed; the rest are the validation gates;
# verifier: the domain's verifier found the key wrong, data.verification).
REJECTION_STAGES = ("parse", "schema", "duplicate", "near_duplicate", "contamination", "verifier", "solver", "critic")
