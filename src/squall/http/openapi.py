"""The OpenAPI 3.1 document of the HTTP API (``GET /v1/openapi.json``); docs/http.md in prose."""

from __future__ import annotations

from typing import Any

from squall import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    str(status): _json(_ref("Error"), text)
    for status, text in (
        (400, "bad_request"),
        (401, "unauthorized"),
        (404, "unknown_function or task_not_found"),
        (413, "too_large"),
        (429, "queue_full"),
        (503, "no_router"),
    )
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "seconds (at most 60) to wait for the task to end",
    "schema": {"type": "number", "minimum": 0, "maximum": 60},
}


def _read(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": list(parameters),
            "responses": {"200": _json({"type": "object"}, summary), **_ERRORS},
        }
    }


def _act(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": list(parameters),
            "responses": {"200": _json({"type": "object"}, "done"), **_ERRORS},
        }
    }


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": kind}}


_PID = {"name": "pid", "in": "path", "required": True, "schema": {"type": "integer"}}
#: the dashboard's endpoints (squall/http/dashboard.py; docs/http.md, "Dashboard")
_DASHBOARD: dict[str, Any] = {
    "/v1/status": _read("The fleet now: router, workers, queues, totals, recent failures"),
    "/v1/tasks": _read(
        "Live and recent tasks, newest first, filtered and paged",
        _query("state", "string", "one state or several, comma-separated"),
        _query("name", "string", "a part of the function's name"),
        _query("queue", "string", "the queue"),
        _query("since", "number", "Unix seconds"),
        _query("until", "number", "Unix seconds"),
        _query("limit", "integer", "tasks per page (at most 1000; 50)"),
        _query("offset", "integer", "tasks to skip (the previous page's next)"),
    ),
    "/v1/tasks/{id}/record": _read(
        "Any task's record: timeline, attempts, worker, error and traceback", _ID
    ),
    "/v1/tasks/{id}/retry": _act("Run a failed background task again (a new id)", _ID),
    "/v1/workers": _read("Connected worker processes, and those lately lost or drained"),
    "/v1/workers/{pid}/drain": _act("Send a worker process nothing new", _PID),
    "/v1/schedules": _read("The router's periodic schedules"),
    "/v1/schedules/{name}/pause": _act("Stop firing a schedule", _NAME),
    "/v1/schedules/{name}/resume": _act("Fire a schedule again from its next tick", _NAME),
    "/v1/stream": {
        "get": {
            "summary": "Server-Sent Events: the router's events, and status every second",
            "parameters": [_query("types", "string", "event types to keep, comma-separated")],
            "responses": {"200": {"description": "text/event-stream"}, **_ERRORS},
        }
    },
    "/v1/session": {
        "get": {
            "summary": "Whether this gateway asks for a token",
            "responses": {"200": _json({"type": "object"}, "required"), **_ERRORS},
        },
        "post": {
            "summary": "Log the dashboard in: a token in, an HttpOnly cookie out",
            "security": [],
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"token": {"type": "string"}}}
                    }
                }
            },
            "responses": {"200": _json({"type": "object"}, "the cookie is set"), **_ERRORS},
        },
        "delete": {
            "summary": "Log the dashboard out (the cookie is removed)",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "logged out")},
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "squall HTTP API", "version": __version__},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "Call": {
                "type": "object",
                "properties": {
                    "args": {"type": "array"},
                    "kwargs": {"type": "object"},
                    "options": {
                        "type": "object",
                        "properties": {
                            "queue": {"type": "string"},
                            "priority": {"type": "integer"},
                            "delay": {"type": "number"},
                            "expires": {"type": "number"},
                            "timeout": {"type": "number"},
                            "retries": {"type": "integer"},
                            "key": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                    "callback_url": {"type": "string", "format": "uri"},
                    "stream": {"type": "boolean"},
                },
            },
            "Accepted": {
                "type": "object",
                "required": ["id", "state"],
                "properties": {"id": {"type": "string"}, "state": {"type": "string"}},
            },
            "Task": {
                "type": "object",
                "required": ["id", "state"],
                "properties": {
                    "id": {"type": "string"},
                    "function": {"type": "string"},
                    "state": {
                        "enum": [
                            "scheduled",
                            "queued",
                            "running",
                            "succeeded",
                            "failed",
                            "cancelled",
                        ]
                    },
                    "result": {},
                    "error": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string"},
                            "message": {"type": "string"},
                            "traceback": {"type": "string"},
                        },
                    },
                    "attempts": {"type": "integer"},
                    "submitted": {"type": ["number", "null"]},
                    "started": {"type": ["number", "null"]},
                    "finished": {"type": ["number", "null"]},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/functions/{name}/calls": {
            "post": {
                "summary": "Call a function by name with JSON arguments",
                "parameters": [_NAME, _WAIT],
                "requestBody": {"content": {"application/json": {"schema": _ref("Call")}}},
                "responses": {
                    "200": _json(_ref("Task"), "ended within ?wait"),
                    "202": _json(_ref("Accepted"), "held by the router"),
                    **_ERRORS,
                },
            }
        },
        "/v1/tasks/{id}": {
            "get": {
                "summary": "A task's state and outcome",
                "parameters": [_ID, _WAIT],
                "responses": {"200": _json(_ref("Task"), "the task"), **_ERRORS},
            },
            "delete": {
                "summary": "Cancel a task",
                "parameters": [_ID],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"cancelled": {"type": "boolean"}}},
                        "whether it was stopped",
                    ),
                    **_ERRORS,
                },
            },
        },
        "/v1/tasks/{id}/events": {
            "get": {
                "summary": "Server-Sent Events: value events, then an end event",
                "parameters": [_ID],
                "responses": {"200": {"description": "text/event-stream"}, **_ERRORS},
            }
        },
        "/v1/functions": {
            "get": {
                "summary": "Every function name the router knows",
                "responses": {"200": _json({"type": "object"}, "the functions"), **_ERRORS},
            }
        },
        "/v1/hooks/{name}": {
            "post": {
                "summary": "Run a function with the request's JSON body (inbound webhook)",
                "parameters": [_NAME],
                "responses": {"202": _json(_ref("Accepted"), "held by the router"), **_ERRORS},
            }
        },
        "/v1/health": {
            "get": {
                "summary": "Whether the router answers",
                "security": [],
                "responses": {"200": {"description": "ok"}, "503": _ERRORS["503"]},
            }
        },
        **_DASHBOARD,
    },
}
