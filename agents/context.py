"""What every node needs besides the graph state: config, run dir, domain data and loaded engines.

Engines are loaded once per model spec and shared by the nodes (the teacher serves analyze, generate,
validate and label), and released before training so a GPU run gives the trainer the memory back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

from agents.config import LoopConfig
from agents.run_dir import RunDir
from data.domains import Domain
from data.records import MCQItem

logger = logging.getLogger(__name__)


@dataclass
class EnginePool:
    engine: str = "auto"
    threads: int = 0
    batch_size: int = 16
    options: dict = field(default_factory=dict)  # more EngineConfig fields (the vLLM ones of the run config)
    _loaded: dict = field(default_factory=dict)

    def get(self, spec: str):
        """The engine serving ``spec``, loaded on first use."""
        if spec not in self._loaded:
            from engines import EngineConfig, load_engine

            config = EngineConfig(engine=self.engine, threads=self.threads, batch_size=self.batch_size, **self.options)
            logger.info("loading %s (%s engine)", spec, self.engine)
            self._loaded[spec] = load_engine(spec, config)
        return self._loaded[spec]

    def release(self) -> None:
        """Close every engine (frees GPU memory and vLLM workers before training)."""
        for engine in self._loaded.values():
            engine.close()
        self._loaded.clear()


@dataclass
class LoopContext:
    config: LoopConfig
    run: RunDir
    domain: Domain
    engines: EnginePool

    @cached_property
    def seed_items(self) -> list[MCQItem]:
        return self.domain.seed_items()

    @cached_property
    def eval_items(self) -> list[MCQItem]:
        items = self.domain.eval_items()
        return items[: self.config.eval_size] if self.config.eval_size else items

    @property
    def encoder_spec(self) -> str:
        """--encoder, else the run's distilled encoder when there is one, else the embedded minilm."""
        if self.config.encoder:
            return self.config.encoder
        own = self.run.root / "encoder" / "student"
        return str(own) if (own / "modules.json").is_file() else "minilm"

    @cached_property
    def embed(self):
        """texts -> embeddings with ``encoder_spec`` (loaded once, shared by generate and validate)."""
        from synth.validate import encoder_embed

        logger.info("sentence encoder: %s", self.encoder_spec)
        return encoder_embed(self.encoder_spec)

    @property
    def verifier_spec(self) -> str:
        """The verifier in force (--verifier, else the domain's; "" for none)."""
        return self.config.verifier_spec(self.domain.verifier)

    @cached_property
    def verifier(self):
        """The verifier function, or None (checked by the pre-flight; loaded once)."""
        from data.verification import load_verifier

        return load_verifier(self.verifier_spec) if self.verifier_spec else None

    @cached_property
    def oracle(self):
        """The domain's oracle function (checked when the domain was read; loaded once)."""
        from data.oracle import load_oracle

        return load_oracle(self.domain.oracle, f"{self.domain.file}: field 'oracle'")

    @cached_property
    def dev_items(self) -> list[MCQItem]:
        """The dev split (model selection only), --dev-size of it stratified over nodes (0: all)."""
        items = self.domain.dev_items()
        n = self.config.dev_size
        if not n or n >= len(items):
            return items
        from data.splits import stratified

        return stratified(items, n, self.config.seed, lambda i: "/".join(i.ability_path or [i.source]))

    @cached_property
    def score_cache(self):
        """Scores already made (eval.score_cache); --no-score-cache: a cache that keeps nothing."""
        from eval.score_cache import ScoreCache

        return ScoreCache.default() if self.config.score_cache else ScoreCache(None)

    @cached_property
    def tracker(self):
        """The --report-to trackers of the loop's stage figures (eval.tracking)."""
        from eval.tracking import StageTracker

        return StageTracker(self.config.trackers, self.run.root, self.run.root.name, self.config.to_dict())

    @cached_property
    def items_by_id(self) -> dict[str, MCQItem]:
        return {it.id: it for it in (*self.seed_items, *self.eval_items)}
