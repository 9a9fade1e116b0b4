"""The seed API: POST /api/auth (API key -> JWT) and POST /api/chat (JWT bearer)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from app.api.auth import Caller, issue_token
from app.api.deps import JsonBody, Runner
from app.api.schemas import AuthRequest, AuthToken, SeedChatRequest, SeedChatResponse, SeedMessage, Usage

router = APIRouter(prefix="/api", tags=["seed API"])


@router.post(
    "/auth",
    dependencies=[JsonBody],
    response_model=AuthToken,
    summary="Trade an API key for a short-lived bearer token",
)
async def auth(body: AuthRequest, request: Request) -> AuthToken:
    issued = await issue_token(request, body.api_key)
    return AuthToken(token=issued.token, token_type="bearer", expires_in=issued.expires_in)


@router.post(
    "/chat",
    dependencies=[JsonBody],
    response_model=SeedChatResponse,
    response_model_exclude_unset=True,
    summary="Chat with the model (bearer token from /api/auth)",
)
async def chat(
    body: SeedChatRequest, request: Request, response: Response, principal: Caller, runner: Runner
) -> SeedChatResponse:
    job = await runner.prepare("/api/chat", principal, body.messages, body, max_tokens=body.max_tokens)
    result = await runner.complete(job, request)
    response.headers.update(result.headers)
    answer = result.answer
    return SeedChatResponse(
        id=job.request_id,
        model=runner.model_name,
        created=int(time.time()),
        message=SeedMessage(role="assistant", content=answer.text),
        finish_reason=answer.finish_reason,  # type: ignore[arg-type]
        usage=Usage.of(answer.prompt_tokens, answer.completion_tokens, job.max_tokens, answer.cached_tokens),
        cached=answer.cached,
    )
