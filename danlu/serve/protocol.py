"""The request bodies of the OpenAI-shaped routes, as pydantic models.

Unknown fields are ignored, as OpenAI's own server does with fields it does not know (a
client library may send newer ones). Fields danlu knows but does not implement are refused
with a 400 naming them when a request sets them to anything but their no-op value
(`unsupported`): presence_penalty, frequency_penalty, logit_bias, best_of, echo, suffix, tools.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

N_MAX = 16  # most choices one request may ask for


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class Sampling(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default: sampling at 1
    top_p: float = Field(1.0, gt=0, le=1)
    n: StrictInt = Field(1, ge=1, le=N_MAX)
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    def unsupported(self) -> str | None:
        """The first field set to something danlu does not do."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name
        return "logit_bias" if self.logit_bias else None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: StrictInt | None = Field(None, ge=0, le=5)
    echo: StrictBool = False
    best_of: StrictInt | None = None
    suffix: str | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.best_of not in (None, 1):
            return "best_of"
        if self.suffix:
            return "suffix"
        return super().unsupported()


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    tools: list[Any] | None = None

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools"
        if self.logprobs:
            return "logprobs"
        return super().unsupported()


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    rows: list[dict[str, Any]] = Field(min_length=1)


class RecommendRequest(BaseModel):
    """POST /v1/recommend/{model}: known users by id, or one new user as the items they liked
    (models that rank from a history), as `danlu predict RUN --users/--liked --k`."""

    model_config = ConfigDict(extra="forbid")
    users: list[str | int] | None = Field(None, min_length=1, max_length=1000)
    liked: list[str | int] | None = Field(None, min_length=1)
    k: int = Field(10, ge=1)
    include_seen: bool = False


async def parse(request: Any, model_cls: type[BaseModel]) -> Any:
    """The JSON body of a Starlette request as `model_cls`; malformed JSON and wrong types are
    400s naming the field (never pydantic's raw list)."""
    import json

    from pydantic import ValidationError

    from danlu.serve.errors import APIError, validation_message

    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        message, param = validation_message(e.errors())
        raise APIError(400, message, param=param) from None
