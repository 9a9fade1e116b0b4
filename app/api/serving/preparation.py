"""From a parsed chat request to a ChatJob: messages checked, tools planned, prompt rendered, output capped.

Prompts are rendered and tokenized off the event loop (`app.inference.prompts`). Every refusal here is a
400 (or a 403 for a scope) that names the field and what is allowed.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from app.access.keyring import IGNORE_EOS_SCOPES
from app.api.errors import ApiError
from app.api.schemas import ChatMessage, GenerationFields
from app.api.serving.jobs import ChatJob, OutputRequest
from app.api.tools import ToolChoiceError, ToolPlan, parser_for, template_renders_tools
from app.api.tools.render import for_native_template, for_plain_template
from app.inference.loader import SamplingDefaults
from app.inference.prompts import PromptRenderer
from app.inference.requests import SamplingParams

if TYPE_CHECKING:
    from app.access.context import Principal
    from app.inference.constraints import Grammars
    from app.settings import Settings
    from app.storage.stores import Storage

TEXT_PARTS = ("text", "input_text", "output_text")
IMAGE_PARTS = ("image_url", "input_image", "image")


class JobBuilder:
    """Turns chat messages and generation fields into a ChatJob; owns the request rules both OpenAI APIs share."""

    def __init__(
        self,
        *,
        settings: Settings,
        tokenizer: Any,
        model_name: str,
        model_identity: str,
        context_window: int,
        storage: Storage | None,
        defaults: SamplingDefaults,
        grammars: Grammars | None,
        max_tokens: int,
    ) -> None:
        self.settings = settings
        self.max_tokens = max_tokens  # the output cap
        self.renderer = PromptRenderer(tokenizer)
        self.model_name = model_name
        self.model_identity = model_identity  # what the cache keys on: MODEL_NAME is only a display name
        self.context_window = context_window
        self.storage = storage
        self.defaults = defaults
        self.grammars = grammars
        template = getattr(tokenizer, "chat_template", None)
        self.parser = parser_for(settings.tool_call_parser, template)
        self.native_tools = template_renders_tools(template)

    def close(self) -> None:
        self.renderer.close()
        if self.grammars is not None:
            self.grammars.close()

    # -- messages and prompt ---------------------------------------------------------------
    def _text_of(self, i: int, message: ChatMessage) -> str:
        if message.content is None or isinstance(message.content, str):
            return message.content or ""
        texts = []
        for j, part in enumerate(message.content):
            if part.type in IMAGE_PARTS:
                raise ApiError(
                    400,
                    "unsupported_content",
                    f"messages[{i}].content[{j}] is an {part.type!r} part, but the model {self.model_name!r} is "
                    "text-only; send text parts only",
                )
            if part.type not in TEXT_PARTS or part.text is None:
                raise ApiError(
                    400,
                    "unsupported_content",
                    f"messages[{i}].content[{j}] has type {part.type!r}; content parts must be "
                    f"{', '.join(repr(t) for t in TEXT_PARTS)} with a text field",
                )
            texts.append(part.text)
        return "".join(texts)

    def _check_messages(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
        """Messages as the chat template takes them: text content, `developer` as `system`, tool calls kept.

        Their size is bounded by the context window (counted in tokens once rendered) and by MAX_BODY_BYTES.
        """
        if not messages:
            raise ApiError(400, "invalid_messages", "messages must contain at least one message")
        if len(messages) > self.settings.max_messages:
            raise ApiError(
                400,
                "too_many_messages",
                f"messages has {len(messages)} entries; at most {self.settings.max_messages} are allowed",
            )
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            message: dict[str, Any] = {
                "role": "system" if m.role == "developer" else m.role,
                "content": self._text_of(i, m),
            }
            if m.tool_calls:
                message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.role == "tool":
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        if all(m["role"] != "user" for m in out):
            raise ApiError(400, "invalid_messages", "messages must contain at least one message with role 'user'")
        return out

    async def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | tuple[dict[str, Any], ...] = ()
    ) -> list[int]:
        """Token ids of the prompt, tools included (by the chat template where it can, else in the parser's format)."""
        if self.native_tools:
            template_messages, template_tools = for_native_template(messages), (list(tools) or None)
        else:
            template_messages, template_tools = for_plain_template(messages, list(tools), self.parser), None
        try:
            return await self.renderer.render(template_messages, template_tools)
        except TemplateError as exc:
            raise ApiError(
                400, "invalid_messages", f"the model's chat template refused these messages: {exc}"
            ) from None

    async def _constraint(self, plan: ToolPlan, output: OutputRequest, owner: str) -> Any:
        """The grammar a forced tool call or response_format imposes on the output, or None."""
        schema, what = plan.schema(), "the parameters schema of the tools in tool_choice"
        if schema is None:
            schema, what = output.json_schema, "the response format's JSON schema"
        if schema is None:
            return None
        if self.grammars is None:
            raise ApiError(400, "unsupported_parameter", "structured output is not available for this model")
        from app.inference.constraints import CompilerUnavailable, GrammarError, SchemaRefused

        try:
            return await self.grammars.constraint(schema, owner)
        except SchemaRefused as exc:
            raise ApiError(400, exc.code, f"{what} is refused: {exc}") from None
        except GrammarError as exc:
            raise ApiError(400, "invalid_schema", f"{what} cannot be enforced: {exc}") from None
        except CompilerUnavailable as exc:
            raise ApiError(
                503, "grammar_compiler_unavailable", f"{exc}; retry shortly", headers={"Retry-After": "5"}
            ) from None

    # -- the job -----------------------------------------------------------------------------
    async def prepare(
        self,
        route: str,
        principal: Principal,
        messages: list[ChatMessage],
        gen: GenerationFields,
        *,
        max_tokens: int | None,
        ignore_eos: bool = False,
        request_id: str | None = None,
        output: OutputRequest | None = None,
    ) -> ChatJob:
        """Validate, render and size a request. An output cap above MAX_TOKENS or beyond the room the prompt leaves
        in the context window is clamped (ChatJob.max_tokens); only a prompt that alone fills the window is refused."""
        if ignore_eos and not principal.scopes & IGNORE_EOS_SCOPES:
            raise ApiError(
                403,
                "insufficient_scope",
                f"ignore_eos needs a key with the {' or '.join(repr(s) for s in sorted(IGNORE_EOS_SCOPES))} scope; "
                f"key {principal.key_id!r} has neither",
            )
        output = output or OutputRequest()
        plain = self._check_messages(messages)
        try:
            plan = ToolPlan.of(output.tools, output.tool_choice, output.parallel_tool_calls, self.parser)
        except ToolChoiceError as exc:
            raise ApiError(400, "invalid_tool_choice", str(exc)) from None
        # Before tokenizing: a schema that is refused costs no tokenizer work.
        constraint = await self._constraint(plan, output, principal.key_id)
        prompt_ids = await self.render(plain, plan.tools)
        room = self.context_window - len(prompt_ids)
        if room < 1:
            raise ApiError(
                400,
                "context_length_exceeded",
                f"the prompt is {len(prompt_ids)} tokens; the model's context window is {self.context_window} tokens",
            )
        cap = self.max_tokens
        d = self.defaults
        # JSON repeats its quotes, colons and braces by nature: a default penalty would bend a grammar-bound output.
        penalty = gen.repetition_penalty
        if penalty is None:
            penalty = 1.0 if constraint is not None else d.repetition_penalty
        params = SamplingParams(
            max_tokens=min(max_tokens or cap, cap, room),
            temperature=d.temperature if gen.temperature is None else gen.temperature,
            top_p=d.top_p if gen.top_p is None else gen.top_p,
            repetition_penalty=penalty,
            stop=gen.stop_tuple(),
            seed=gen.seed,
            ignore_eos=ignore_eos,
            timeout_s=self.settings.generation_timeout_s,
            constraint=constraint,
        )
        cache_key = None
        # Answers that carry tool calls or follow a schema are not cached: the key would have to hold the tools too.
        if self.storage is not None and not ignore_eos and constraint is None and plan.mode == "none":
            cache_key = self.storage.cache.key_for(
                owner=principal.key_id,
                model=self.model_identity,
                prompt_ids=prompt_ids,
                params={
                    "max_tokens": params.max_tokens,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "repetition_penalty": params.repetition_penalty,
                    "stop": list(params.stop),
                    "seed": params.seed,
                },
            )
        return ChatJob(
            request_id=request_id or f"chatcmpl-{uuid.uuid4().hex}",
            route=route,
            key_id=principal.key_id,
            messages=plain,
            prompt_ids=prompt_ids,
            params=params,
            cache_key=cache_key,
            plan=plan,
        )
