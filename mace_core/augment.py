"""LLM prompt augmentation (spec Stage D, "use_gpt" path; issue 6 item 1).

The paper asks an LLM (GPT-4) for diverse prompts that contain the concept; the official code ships fixed
templates instead and its GPT path only handles objects (styles return ``None`` and crash). This module asks
any OpenAI-compatible chat-completions server for ``n`` prompts that contain the concept phrase, for every
concept type (object, identity, style, explicit), and turns each into a template-aligned
:class:`~mace_core.prompts.PromptPair` by replacing the phrase with the concept's mapping.

Validation of every returned prompt (a prompt failing any check is dropped, with the reason counted):

1. the response is a JSON object ``{"prompts": [str, ...]}`` (a Markdown code fence around it is tolerated);
2. the prompt is one non-empty line;
3. it contains the concept phrase exactly once (case-insensitive, whole phrase: "cat" does not match "cats");
4. it is not a duplicate (case- and whitespace-insensitive) of an accepted prompt;
5. the erased and the mapping prompt fit every tokenizer's context window (``prompts.check_prompt_fits``) and
   their Stage E token matching succeeds (``prompts.match_token_indices``).

Missing prompts are asked for again, at most ``max_retries`` times; then a one-line ``ValueError`` names the
concept and the rejection reasons. The request payload is a pure function of (model, instruction, concept,
n, seed, attempt, prompts accepted so far), so a run is reproducible wherever the server honours ``seed``,
and the pipeline caches the result by :func:`augment_cache_fields`.

Secrets: the API key is read only from the environment (``MACE_LLM_API_KEY``, else ``OPENAI_API_KEY``), never
from config, and never appears in a log record or an exception message (errors name only the exception class
and HTTP status; messages are redacted as a second line of defence).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mace_core.concepts import Concept
from mace_core.prompts import PromptPair, check_prompt_fits, match_token_indices

logger = logging.getLogger(__name__)

# Bump when the instruction text or the validation rules change: it is part of the cache key.
AUGMENT_INSTRUCTION_VERSION = "1"
API_KEY_ENV_VARS: tuple[str, ...] = ("MACE_LLM_API_KEY", "OPENAI_API_KEY")
MAX_WORDS = 30  # asked of the model; the tokenizer check is what actually enforces the window

# What each concept type's prompts should depict; "{phrase}" is the concept phrase.
_SUBJECT: dict[str, str] = {
    "object": "a scene, photo or artwork that shows the object '{phrase}'",
    "identity": "a photo, portrait or artwork that shows the person '{phrase}'",
    "style": "an artwork or image made in the style of '{phrase}', naming '{phrase}' as the artist or style",
    "explicit": "an image whose content involves '{phrase}'",
}

_SYSTEM = (
    "You write prompts for a text-to-image model. Reply with a JSON object of the form "
    '{"prompts": ["...", "..."]} and nothing else.'
)

_USER = (
    "Write {k} diverse, natural text-to-image prompts. Each prompt describes {subject}. Rules: every prompt "
    "contains the exact phrase '{phrase}' exactly once, spelled exactly like that; one line per prompt; at "
    "most {max_words} words; no numbering; vary the setting, composition and medium; all prompts distinct."
)
_USER_AVOID = " Do not repeat any of these prompts: {accepted}"


@dataclass(frozen=True)
class LlmClientSettings:
    """Where and how to call the chat-completions API (no secrets: the key comes from the environment).

    Attributes:
        base_url: OpenAI-compatible base URL including the version path, e.g. ``"http://127.0.0.1:8000/v1"``.
        model: chat model name as the server knows it, e.g. ``"gpt-4o-mini"``.
        temperature: sampling temperature sent with every request.
        timeout_s: per-request timeout in seconds.
    """

    base_url: str
    model: str
    temperature: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not re.match(r"^https?://\S+$", self.base_url):
            raise ValueError(
                f"llm base_url {self.base_url!r} is not an http(s) URL: set prompts.llm_base_url, "
                "e.g. 'https://api.openai.com/v1' or 'http://127.0.0.1:8000/v1'"
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("llm model is empty: set prompts.llm_model, e.g. 'gpt-4o-mini'")
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise ValueError(f"llm temperature={self.temperature} must lie in [0, 2]")
        if not float(self.timeout_s) > 0:
            raise ValueError(f"llm timeout_s={self.timeout_s} must be > 0 seconds")


def settings_from_config(cfg: Any) -> LlmClientSettings:
    """Build settings from a ``config.PromptsConfig`` (``llm_base_url``, ``llm_model``), checking both are set."""
    base_url, model = getattr(cfg, "llm_base_url", None), getattr(cfg, "llm_model", None)
    if not base_url or not model:
        raise ValueError(
            "prompts.backend='llm' needs prompts.llm_base_url and prompts.llm_model: set both "
            "(the API key comes from the MACE_LLM_API_KEY or OPENAI_API_KEY environment variable)"
        )
    return LlmClientSettings(base_url=base_url, model=model)


# ---------------------------------------------------------------------------------------------------------
# Request payload (deterministic) and cache key fields
# ---------------------------------------------------------------------------------------------------------


def instruction_text(concept: Concept, k: int) -> str:
    """The user message asking for ``k`` prompts of ``concept`` (without the avoid-list of retries)."""
    subject = _SUBJECT[concept.type].format(phrase=concept.name)
    return _USER.format(k=k, subject=subject, phrase=concept.name, max_words=MAX_WORDS)


def build_request(
    settings: LlmClientSettings,
    concept: Concept,
    k: int,
    seed: int,
    attempt: int = 0,
    accepted: Sequence[str] = (),
) -> dict[str, Any]:
    """The chat-completions payload for one attempt: a pure function of its arguments.

    Args:
        settings: model and temperature (the base URL is not part of the payload).
        concept: the concept whose phrase every prompt must contain.
        k: number of prompts asked for in this attempt (the missing count on retries).
        seed: the concept's augmentation seed; attempt ``a`` sends ``seed + a`` so retries are new draws.
        attempt: 0 for the first request, 1.. for retries.
        accepted: prompts already accepted (retries ask the model not to repeat them).

    Returns:
        ``{"model", "messages", "temperature", "seed", "n": 1}`` ready for ``chat.completions.create``.
    """
    user = instruction_text(concept, k)
    if accepted:
        user += _USER_AVOID.format(accepted=json.dumps(list(accepted), ensure_ascii=False))
    return {
        "model": settings.model,
        "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}],
        "temperature": float(settings.temperature),
        "seed": int(seed) + int(attempt),
        "n": 1,
    }


def augment_cache_fields(settings: LlmClientSettings, concept: Concept, n: int, seed: int) -> dict[str, Any]:
    """What the LLM stage's cache key must contain: backend, model, instruction, concept, n, seed.

    The instruction enters as its version plus the sha256 of the first request's messages, so any change of
    wording invalidates the cache even if the version was not bumped. The base URL and the retry bound are
    not included: the same model behind another host gives the same cache entry.
    """
    first = build_request(settings, concept, n, seed)
    digest = hashlib.sha256(json.dumps(first["messages"], sort_keys=True).encode("utf-8")).hexdigest()
    return {
        "backend": "llm",
        "model": settings.model,
        "temperature": float(settings.temperature),
        "instruction_version": AUGMENT_INSTRUCTION_VERSION,
        "instruction_sha256": digest,
        "concept": concept.model_dump(mode="json"),
        "n": int(n),
        "seed": int(seed),
    }


# ---------------------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------------------


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive whole-phrase regex: word boundaries at both ends, any run of spaces inside."""
    body = r"\s+".join(re.escape(w) for w in phrase.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def parse_response(content: str | None) -> list[Any]:
    """The ``prompts`` list of a reply ``{"prompts": [...]}`` (an enclosing Markdown code fence is allowed).

    Raises:
        ValueError: not JSON, not an object, or no ``prompts`` list (the caller counts it and retries).
    """
    if not content or not content.strip():
        raise ValueError("empty response")
    text = content.strip()
    fence = re.match(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompts"), list):
        raise ValueError("JSON without a 'prompts' list")
    return obj["prompts"]


def _normalised(text: str) -> str:
    """Duplicate key: case-folded, whitespace-collapsed."""
    return " ".join(text.casefold().split())


def validate_prompt(
    candidate: Any,
    concept: Concept,
    tokenizers: Sequence[Any],
    seen: set[str],
) -> tuple[PromptPair | None, str | None]:
    """Check one returned prompt and build its pair; returns ``(pair, None)`` or ``(None, reason)``.

    ``seen`` holds the normalised accepted prompts and is updated when the prompt is accepted.
    """
    # 1. a single non-empty line of text
    if not isinstance(candidate, str):
        return None, "not a string"
    if "\n" in candidate.strip() or "\r" in candidate.strip():
        return None, "spans several lines"
    prompt = " ".join(candidate.split())
    if not prompt:
        return None, "empty"
    # 2. the concept phrase exactly once (whole phrase, any case)
    hits = list(phrase_pattern(concept.name).finditer(prompt))
    if not hits:
        return None, "missing the concept phrase"
    if len(hits) > 1:
        return None, "concept phrase more than once"
    # 3. duplicates
    key = _normalised(prompt)
    if key in seen:
        return None, "duplicate"
    # 4. mapping prompt: the same text with the phrase replaced (template-aligned pair)
    hit = hits[0]
    mapping = prompt[: hit.start()] + concept.mapping + prompt[hit.end() :]
    target = hit.group(0)
    # 5. context window and Stage E token matching, for every tokenizer of the pipeline
    for tok in tokenizers:
        try:
            check_prompt_fits(tok, prompt)
            check_prompt_fits(tok, mapping)
        except ValueError:
            return None, "too long for the context window"
        try:
            match_token_indices(tok, prompt, mapping, target)
        except ValueError:
            return None, "no usable token alignment with its mapping prompt"
    seen.add(key)
    return PromptPair(erased=prompt, mapping=mapping, target=target), None


# ---------------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------------


def _api_key(environ: Mapping[str, str]) -> str:
    for var in API_KEY_ENV_VARS:
        value = environ.get(var, "").strip()
        if value:
            return value
    raise ValueError(
        "no LLM API key: set the MACE_LLM_API_KEY (or OPENAI_API_KEY) environment variable "
        "(any non-empty value for a local server without authentication)"
    )


def _redact(text: str, secret: str) -> str:
    """Replace the secret anywhere in ``text`` (defence in depth: messages never include it by design)."""
    return text.replace(secret, "***") if secret else text


def _content_of(response: Any) -> str | None:
    """The first choice's message text, or None for an envelope without one."""
    choices = getattr(response, "choices", None)
    if not choices:
        return None
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else None


def _is_fatal(exc: Exception) -> bool:
    """Client errors that a retry cannot fix (bad key, unknown model, bad request)."""
    import openai

    status = getattr(exc, "status_code", None)
    return isinstance(exc, openai.APIStatusError) and status is not None and 400 <= status < 500 and status not in (
        408,
        409,
        429,
    )


def _describe(exc: Exception) -> str:
    """Exception class and HTTP status only: response bodies may echo request headers."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status is not None else "")


def llm_prompt_pairs(
    concept: Concept,
    n: int,
    seed: int,
    client_settings: LlmClientSettings,
    max_retries: int,
    tokenizer: Any,
    environ: Mapping[str, str] | None = None,
    client: Any | None = None,
) -> list[PromptPair]:
    """``n`` validated (erased, mapping, target) pairs for ``concept`` from an OpenAI-compatible LLM.

    Steps: 1. validate arguments and read the key from the environment; 2. request ``n`` prompts;
    3. validate each (module docstring), keep the valid ones in order; 4. while fewer than ``n`` and retries
    remain, ask for the missing count (listing accepted prompts to avoid); 5. return the first ``n`` pairs
    or raise.

    Args:
        concept: the concept (any type); its ``name`` must appear in every prompt, ``mapping`` replaces it.
        n: number of pairs wanted (1..1000).
        seed: the concept's seed (e.g. ``seeds.concept_seed(global_seed, name)``); sent as the request seed.
        client_settings: base URL, model, temperature, timeout.
        max_retries: extra requests allowed after the first (0..20).
        tokenizer: the pipeline's CLIP tokenizer, or a list of them (SDXL): every prompt must fit all.
        environ: where to read the API key (default ``os.environ``); tests pass a dict.
        client: an ``openai.OpenAI``-like client to use instead of building one (tests).

    Returns:
        ``n`` PromptPairs; ``target`` is the phrase as written in the prompt (its case may differ).

    Raises:
        ValueError: bad arguments, no API key, a non-retryable HTTP error, or fewer than ``n`` valid prompts
            after ``max_retries`` retries (one line naming the concept and the rejection reasons).
    """
    # 1. arguments and key
    if not isinstance(concept, Concept):
        raise TypeError(f"concept must be a mace_core.concepts.Concept, got {type(concept).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000:
        raise ValueError(f"n={n!r} prompts requested for {concept.name!r}: expected an int in 1..1000")
    if not isinstance(max_retries, int) or not 0 <= max_retries <= 20:
        raise ValueError(f"max_retries={max_retries!r}: expected an int in 0..20")
    if not isinstance(client_settings, LlmClientSettings):
        raise TypeError(f"client_settings must be LlmClientSettings, got {type(client_settings).__name__}")
    tokenizers = list(tokenizer) if isinstance(tokenizer, (list, tuple)) else [tokenizer]
    if not tokenizers or any(t is None for t in tokenizers):
        raise ValueError("tokenizer is missing: pass the pipeline's tokenizer(s) (models.tokenizers_of(pipe))")
    key = _api_key(os.environ if environ is None else environ)
    import openai  # lazy: only the LLM backend needs it

    if client is None:
        # max_retries=0: this function owns the (bounded) retry policy
        client = openai.OpenAI(
            api_key=key, base_url=client_settings.base_url, timeout=client_settings.timeout_s, max_retries=0
        )

    pairs: list[PromptPair] = []
    seen: set[str] = set()
    reasons: Counter[str] = Counter()
    for attempt in range(max_retries + 1):
        missing = n - len(pairs)
        # 2./4. one request for the missing prompts
        payload = build_request(client_settings, concept, missing, seed, attempt, [p.erased for p in pairs])
        try:
            response = client.chat.completions.create(**payload)
        except json.JSONDecodeError:  # a 200 whose body is not JSON
            reasons["malformed HTTP response body"] += 1
            logger.warning("LLM attempt %d for %r: malformed HTTP response body", attempt + 1, concept.name)
            continue
        except openai.APIError as exc:  # HTTP status, connection and timeout errors
            if _is_fatal(exc):
                raise ValueError(
                    _redact(
                        f"LLM request for concept {concept.name!r} failed with {_describe(exc)}: check the "
                        "API key variable, prompts.llm_model and prompts.llm_base_url",
                        key,
                    )
                ) from None
            reasons[_describe(exc)] += 1
            logger.warning("LLM attempt %d for %r failed: %s", attempt + 1, concept.name, _describe(exc))
            continue
        # 3. parse and validate
        try:
            candidates = parse_response(_content_of(response))
        except ValueError as exc:
            reasons[str(exc)] += 1
            logger.warning("LLM attempt %d for %r: %s", attempt + 1, concept.name, exc)
            continue
        for cand in candidates:
            if len(pairs) == n:
                break
            pair, reason = validate_prompt(cand, concept, tokenizers, seen)
            if pair is None:
                reasons[str(reason)] += 1
            else:
                pairs.append(pair)
        logger.info(
            "LLM attempt %d for %r: %d/%d valid prompts so far", attempt + 1, concept.name, len(pairs), n
        )
        if len(pairs) == n:
            return pairs
    # 5. out of retries
    why = ", ".join(f"{count}x {reason}" for reason, count in reasons.most_common()) or "no prompts returned"
    raise ValueError(
        _redact(
            f"LLM returned {len(pairs)} valid prompts of {n} for concept {concept.name!r} after {max_retries} "
            f"retries: {why}; raise prompts.llm_max_retries, try another prompts.llm_model, or use "
            "prompts.backend='templates'",
            key,
        )
    )
