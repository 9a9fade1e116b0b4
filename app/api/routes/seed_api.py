"""The seed API: POST /api/auth (API key -> JWT) and POST /api/chat (JWT bearer)."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from app.api.auth import Caller
from app.api.deps import JsonBody, Runner
from app.api.schemas import AuthRequest, SeedChatRequest, usage_dict
from app.api.serving import MAX_TOKENS_HEADER

router = APIRouter(prefix="/api", tags=["seed API"])


@router.post("/auth", dependencies=[JsonBody], summary="Trade an API key for a short-lived bearer token")
async def auth(body: AuthRequest, request: Request) -> dict:
    token: dict = await request.app.state.access.issue_token(body.api_key, request)
    return token


@router.post("/chat", dependencies=[JsonBody], summary="Chat with the model (bearer token from /api/auth)")
async def chat(body: SeedChatRequest, request: Request, response: Response, principal: Caller, runner: Runner) -> dict:
    job = await runner.prepare("/api/chat", principal, body.messages, body, max_tokens=body.max_tokens)
    answer = await runner.complete(job, request)
    response.headers[MAX_TOKENS_HEADER] = str(job.max_tokens)
    return {
        "id": job.request_id,
        "model": runner.model_name,
        "created": int(time.time()),
        "message": {"role": "assistant", "content": answer.text},
        "finish_reason": answer.finish_reason,
        "usage": usage_dict(answer.prompt_tokens, answer.completion_tokens, job.max_tokens, answer.cached_tokens),
        "cached": answer.cached,
    }
