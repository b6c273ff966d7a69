"""SimulEval 1.1 speech-to-text agent for the wait-k LeaP model (``leap_s2t_waitk``).

Run it with SimulEval's command line, either by class or by file::

    simuleval --agent-class leap_fairseq.agents.LeapWaitkSpeechAgent \\
        --source tst-COMMON.wav_list --target tst-COMMON.de \\
        --checkpoint checkpoint_best.pt --data-dir PREP_DIR --config-yaml config_st.yaml \\
        --output OUT

    simuleval --agent path/to/leap_fairseq/agents/waitk_speech_agent.py ...

Each policy call does the same steps:

1. READ side: the samples that arrived since the last call go through the online filterbank
   and global CMVN (:mod:`leap_fairseq.agents.online_features`), and the new frames through
   the model's streaming encoder.
2. WRITE side: while the wait-k schedule (``model.should_write``, which calls
   ``waitk_should_write`` of :mod:`leap_fairseq.models.waitk_schedule`) allows the next target
   token, ``model.feed_visible_source`` gives every decoder layer's cross-attention the encoder
   states that token may see, and one greedy decoder step produces it. SentencePiece pieces are
   held until their word is complete (:mod:`leap_fairseq.agents.word_assembler`), and whole
   words are written.

SimulEval 1.1.4's sentence-level evaluator sends a new source segment on every call. After the
last segment it calls the agent only once more. Each call therefore writes every word the
schedule allows, and the call that receives the end of the source decodes to the end of the
sentence.
"""

import argparse
import importlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

import leap_fairseq  # noqa: F401  (applies leap_fairseq.compat and registers the models)
from leap_fairseq.agents.online_features import OnlineFeatureExtractor
from leap_fairseq.vocabulary import VocabularyMismatchError, check_vocabulary
from leap_fairseq.agents.word_assembler import WordAssembler
from leap_fairseq.audio import GlobalCMVN
from leap_fairseq.models.waitk_schedule import check_waitk_arguments
from simuleval.agents import AgentStates, ReadAction, SpeechToTextAgent, WriteAction
from simuleval.utils import entrypoint

logger = logging.getLogger(__name__)


def check_package_not_shadowed() -> None:
    """Raise ImportError when ``leap_fairseq`` was imported as an empty namespace package.

    A folder named ``leap_fairseq`` without ``__init__.py`` (for example a clone of this
    repository) in the current directory comes first on ``sys.path`` for ``python -m`` and
    ``python -c``. With an editable install whose finder runs after Python's path finder, that
    folder becomes the package ``leap_fairseq``: the submodules still load, but
    ``leap_fairseq/__init__.py`` never runs, so the :mod:`leap_fairseq.compat` patches are
    missing and checkpoint loading fails later with "Weights only load failed".
    """
    package = importlib.import_module("leap_fairseq")
    if hasattr(package, "__version__"):
        return
    folders = ", ".join(str(folder) for folder in getattr(package, "__path__", [])) or "an unknown folder"
    raise ImportError(
        f"the package leap_fairseq was imported from {folders}, a folder without __init__.py that shadows "
        "the installed package, so the leap_fairseq.compat patches are not applied. Run the command from "
        "another folder (one that has no leap_fairseq subfolder), or with 'python -P' on Python 3.11 and later"
    )


@dataclass
class StepTiming:
    """Wall-clock cost of one part of a policy call.

    Attributes:
        kind: ``read`` (features, encoder and cross-attention for new samples) or ``write``
            (decoder steps for the tokens written in this call).
        source_ms: milliseconds of source received when the work was done.
        seconds: wall-clock time of the work.
        num_tokens: target tokens decoded (``write``), or new encoder states (``read``).
        cpu_seconds: CPU time of this process during the work (all its threads), which other
            processes on a busy machine do not inflate.
    """

    kind: str
    source_ms: float
    seconds: float
    num_tokens: int
    cpu_seconds: float = 0.0


class LeapAgentStates(AgentStates):
    """SimulEval's per-utterance states plus the streaming model's state.

    Attributes (besides SimulEval's ``source``, ``target``, ``source_finished`` ...):
        features: the online filterbank and CMVN.
        stream: the model's ``StreamState`` (encoder and decoder states), built lazily.
        words: pieces held until their word is complete.
        num_samples_consumed: how many entries of ``source`` went through the filterbank.
        num_encoder_states: encoder states produced so far.
        encoder_finished: True once ``stream_encoder`` has run with ``finished=True``.
        target_tokens: dictionary indices of the tokens decoded so far, without EOS.
        hypothesis_finished: True once EOS (or the length limit) ended the translation.
        timings: one :class:`StepTiming` per READ or WRITE part of a policy call.
    """

    def __init__(self, make_features) -> None:
        self._make_features = make_features
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.features: OnlineFeatureExtractor = self._make_features()
        self.stream = None
        self.words = WordAssembler()
        self.num_samples_consumed = 0
        self.num_encoder_states = 0
        self.encoder_finished = False
        self.target_tokens: List[int] = []
        self.hypothesis_finished = False
        self.timings: List[StepTiming] = []


class LeapWaitkSpeechAgent(SpeechToTextAgent):
    """Wait-k simultaneous speech translation with fixed pre-decision and greedy decoding.

    Works with every encoder of ``leap_s2t_waitk``. Streaming encoders (causal or chunk mask)
    update their state with the new frames only. Encoders that must re-encode the prefix (full
    mask, for example the softmax baseline) re-run on all frames read so far, so the same code
    measures both.
    """

    source_type = "speech"
    target_type = "text"

    def __init__(self, args: argparse.Namespace) -> None:
        check_package_not_shadowed()
        self.args = args
        self.device = torch.device(getattr(args, "device", None) or "cpu")
        self._load(args)
        super().__init__(args)

    # ------------------------------------------------------------------
    # Command line
    # ------------------------------------------------------------------

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", type=str, required=True, help="fairseq checkpoint of a leap_s2t_waitk model")
        parser.add_argument(
            "--data-dir",
            type=str,
            required=True,
            help="prepared data folder that contains the data config, the dictionary and the SentencePiece model",
        )
        parser.add_argument(
            "--config-yaml",
            type=str,
            default="config_st.yaml",
            help="data config file name inside --data-dir (default: %(default)s)",
        )
        parser.add_argument(
            "--waitk-lagging",
            type=int,
            default=None,
            help="k, the number of source chunks read before the first target token (default: the checkpoint's)",
        )
        parser.add_argument(
            "--fixed-pre-decision-ratio",
            type=int,
            default=None,
            help="encoder states per source chunk; 40 ms each (default: the checkpoint's)",
        )
        parser.add_argument(
            "--max-len-a",
            type=float,
            default=0.0,
            help="the translation ends after at most max_len_a * filterbank frames + max_len_b tokens, "
            "as fairseq-generate's option (default: %(default)s)",
        )
        parser.add_argument(
            "--max-len-b", type=int, default=200, help="see --max-len-a (default: %(default)s)"
        )
        parser.add_argument(
            "--force-finish",
            action="store_true",
            default=False,
            help="do not end the translation before the whole source is read: EOS is not chosen while "
            "source remains (by default EOS ends it, as in fairseq-generate)",
        )
        # SimulEval's general parser already defines --device (default cpu); the agent uses it.

    # ------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------

    def _load(self, args: argparse.Namespace) -> None:
        from fairseq import checkpoint_utils
        from fairseq.data.audio.data_cfg import S2TDataConfig

        from leap_fairseq.models.leap_s2t_waitk import LeapS2TWaitkModel

        checkpoint = Path(args.checkpoint)
        data_dir = Path(args.data_dir)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: file not found")
        config_path = data_dir / args.config_yaml
        if not config_path.is_file():
            raise FileNotFoundError(f"data config {config_path} not found; check --data-dir and --config-yaml")

        overrides = {"data": str(data_dir.resolve()), "config_yaml": args.config_yaml}
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), arg_overrides=overrides)
        check_vocabulary(state, checkpoint, data_dir, args.config_yaml)
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides=overrides, state=state
        )
        model = models[0]
        if not isinstance(model, LeapS2TWaitkModel):
            raise ValueError(f"{checkpoint} contains a {type(model).__name__}; the agent needs a leap_s2t_waitk model")
        dictionary = task.target_dictionary
        if len(dictionary) != model.decoder.embed_tokens.weight.size(0):
            raise VocabularyMismatchError(
                f"the dictionary of {data_dir} has {len(dictionary)} symbols but {checkpoint} was trained with "
                f"{model.decoder.embed_tokens.weight.size(0)}; point --data-dir at the data folder the model was trained on"
            )
        model.eval()
        self.model = model.to(self.device)
        self.dictionary = dictionary

        data_cfg = S2TDataConfig(config_path)
        self.cmvn = _load_cmvn(data_cfg, config_path)
        bpe = data_cfg.bpe_tokenizer or {}
        if bpe.get("bpe") != "sentencepiece":
            raise ValueError(f"{config_path}: bpe_tokenizer must be sentencepiece for whole-word output, got {bpe!r}")
        pre_tokenizer = (data_cfg.pre_tokenizer or {}).get("tokenizer")
        if pre_tokenizer is not None:
            raise ValueError(
                f"{config_path}: pre_tokenizer {pre_tokenizer!r} is not supported by the streaming agent; "
                "prepare the data without a pre-tokenizer"
            )

        self.waitk_lagging = args.waitk_lagging if args.waitk_lagging is not None else model.waitk_lagging
        if self.waitk_lagging is None:
            raise ValueError(f"{checkpoint} was trained without --waitk-lagging; pass --waitk-lagging K to the agent")
        self.pre_decision_ratio = (
            args.fixed_pre_decision_ratio if args.fixed_pre_decision_ratio is not None else model.fixed_pre_decision_ratio
        )
        check_waitk_arguments(self.waitk_lagging, self.pre_decision_ratio)
        if self.waitk_lagging != model.waitk_lagging or self.pre_decision_ratio != model.fixed_pre_decision_ratio:
            logger.info(
                "decoding with k=%d and pre-decision ratio %d (the checkpoint has k=%s, ratio %d)",
                self.waitk_lagging,
                self.pre_decision_ratio,
                model.waitk_lagging,
                model.fixed_pre_decision_ratio,
            )
        self.max_len_a = float(args.max_len_a)
        self.max_len_b = int(args.max_len_b)
        # fairseq's SequenceGenerator never lets a hypothesis reach max_decoder_positions.
        self.max_positions_len = model.max_decoder_positions() - 1
        self.force_finish = bool(args.force_finish)
        self.eos = dictionary.eos()
        self.pad = dictionary.pad()
        logger.info(
            "loaded %s: %s encoder (%s), k=%d, pre-decision ratio %d, %d target symbols",
            checkpoint,
            model.encoder.attention_type,
            "streams incrementally" if model.encoder_streams_incrementally else "re-encodes the prefix",
            self.waitk_lagging,
            self.pre_decision_ratio,
            len(dictionary),
        )

    def build_states(self) -> LeapAgentStates:
        return LeapAgentStates(lambda: OnlineFeatureExtractor(cmvn=self.cmvn))

    def to(self, device, *args, **kwargs) -> None:
        """Move the model to ``device`` (SimulEval calls this with its --device)."""
        if kwargs.get("fp16"):
            raise ValueError("the LeaP agent runs in float32; drop --fp16 / --dtype fp16")
        self.device = torch.device(device)
        self.model.to(self.device)
        self.reset()

    def new_stream_state(self):
        """Return an empty model stream state with the agent's k and pre-decision ratio."""
        stream = self.model.init_stream_state(self.device, batch_size=1, waitk_lagging=self.waitk_lagging)
        stream.fixed_pre_decision_ratio = self.pre_decision_ratio
        return stream

    # ------------------------------------------------------------------
    # Policy
    # ------------------------------------------------------------------

    @torch.inference_mode()
    def policy(self, states: Optional[LeapAgentStates] = None):
        """Encode the new source, then write every whole word the wait-k schedule allows.

        Returns ReadAction when no word is complete yet, else WriteAction with the words
        separated by spaces. The action is finished once the source has ended and the
        translation is complete.
        """
        if states is None:
            states = self.states
        if states.stream is None:
            states.stream = self.new_stream_state()

        if not states.hypothesis_finished:
            self._read_source(states)
            words = self._write_tokens(states)
        else:
            # The translation ended before the source did; the rest of the source is not needed.
            states.num_samples_consumed = len(states.source)
            words = []

        if states.source_finished and not states.hypothesis_finished:
            raise RuntimeError("the source has ended but decoding stopped before EOS; this is a bug in the agent")
        if states.source_finished:
            return WriteAction(" ".join(words), finished=True)
        if words:
            return WriteAction(" ".join(words), finished=False)
        return ReadAction()

    def _source_ms(self, states: LeapAgentStates) -> float:
        rate = states.source_sample_rate or 16000
        return 1000.0 * len(states.source) / rate

    def _read_source(self, states: LeapAgentStates) -> None:
        """Run the samples that arrived since the last call through features and encoder."""
        new_samples = states.source[states.num_samples_consumed:]
        states.num_samples_consumed = len(states.source)
        must_finish = states.source_finished and not states.encoder_finished
        if not new_samples and not must_finish:
            return
        started = time.perf_counter()
        cpu_started = time.process_time()
        if new_samples:
            frames = states.features.accept(new_samples, states.source_sample_rate)
        else:
            frames = torch.zeros((0, self.model.encoder.input_dim), dtype=torch.float32)
        new_states = 0
        if frames.size(0) > 0 or must_finish:
            # The re-encoding path costs a full pass per call, so it runs only when frames arrived.
            encoder_states, states.stream = self.model.stream_encoder(
                frames.to(self.device), states.stream, finished=states.source_finished
            )
            new_states = encoder_states.size(0)
            states.encoder_finished = states.source_finished
        states.num_encoder_states = states.stream.encoder.num_states_out
        states.timings.append(
            StepTiming(
                "read", self._source_ms(states), time.perf_counter() - started, new_states, time.process_time() - cpu_started
            )
        )

    def _max_length(self, states: LeapAgentStates) -> Optional[int]:
        """Return the token limit max_len_a * frames + max_len_b, or None while it may still grow.

        fairseq-generate computes the limit from the frames of the whole utterance. Before the
        source ends, a limit that the next step would reach can still grow with max_len_a > 0,
        so the agent reads more instead of ending the translation.
        """
        limit = min(int(self.max_len_a * states.features.num_frames + self.max_len_b), self.max_positions_len)
        is_final = states.source_finished or self.max_len_a <= 0 or limit == self.max_positions_len
        if len(states.target_tokens) >= limit and not is_final:
            return None
        return limit

    def _write_tokens(self, states: LeapAgentStates) -> List[str]:
        """Decode greedily while the schedule allows; return the words that became complete."""
        words: List[str] = []
        started = time.perf_counter()
        cpu_started = time.process_time()
        num_decoded = 0
        stream = states.stream
        while not states.hypothesis_finished and self.model.should_write(stream):
            if stream.encoder.num_states_out == 0:
                # Only reached once the source has ended: a source too short for one encoder
                # state (under about 0.15 s) gives an empty translation.
                logger.warning(
                    "the source gave no encoder state (%d frames); the translation is empty", states.features.num_frames
                )
                states.hypothesis_finished = True
                break
            step = len(states.target_tokens)
            limit = self._max_length(states)
            if limit is None:
                break
            stream = self.model.feed_visible_source(stream)
            prev_token = states.target_tokens[-1] if states.target_tokens else self.eos
            log_probs, stream = self.model.decoder_step(prev_token, stream)
            num_decoded += 1
            token = self._choose_token(log_probs[0], step, limit, states.source_finished)
            if token == self.eos:
                states.hypothesis_finished = True
                words.extend(states.words.flush())
                break
            states.target_tokens.append(token)
            words.extend(states.words.push(self.dictionary[token]))
        states.stream = stream
        if states.hypothesis_finished and states.words.held:
            words.extend(states.words.flush())
        if num_decoded:
            states.timings.append(
                StepTiming(
                    "write",
                    self._source_ms(states),
                    time.perf_counter() - started,
                    num_decoded,
                    time.process_time() - cpu_started,
                )
            )
        return words

    def _choose_token(self, log_probs: torch.Tensor, step: int, limit: int, source_finished: bool) -> int:
        """Pick the greedy token with the constraints of fairseq's SequenceGenerator (beam 1, min_len 1)."""
        scores = log_probs.clone()
        scores[scores != scores] = -math.inf
        scores[self.pad] = -math.inf
        if step >= limit:
            return self.eos
        if step < 1 or (self.force_finish and not source_finished):
            scores[self.eos] = -math.inf
        return int(scores.argmax())


def _load_cmvn(data_cfg, config_path: Path) -> Optional[GlobalCMVN]:
    """Return the global CMVN that the data config applies to evaluation features, or None."""
    transforms = data_cfg.get_feature_transforms("simuleval", False).get("feature_transforms") or []
    unsupported = [name for name in transforms if name != "global_cmvn"]
    if unsupported:
        raise ValueError(
            f"{config_path}: the evaluation feature transforms {unsupported} are not supported by the streaming "
            "agent (only global_cmvn is)"
        )
    if "global_cmvn" not in transforms:
        return None
    stats = data_cfg.global_cmvn_stats_npz
    if not stats:
        raise ValueError(f"{config_path}: global_cmvn is listed but global_cmvn.stats_npz_path is missing")
    return GlobalCMVN.load(stats)


# ``simuleval --agent path/to/this/file.py`` executes this file as a module named "agents".
# It then needs an @entrypoint registration; the package's own class is registered, so the
# class behaves the same whichever way SimulEval loads it. Importing the file as
# leap_fairseq.agents.waitk_speech_agent (--agent-class) must not register it, because
# SimulEval then finds the class twice and rejects the run.
if __name__ != "leap_fairseq.agents.waitk_speech_agent":
    from leap_fairseq.agents.waitk_speech_agent import LeapWaitkSpeechAgent as _PackagedAgent

    entrypoint(_PackagedAgent)
