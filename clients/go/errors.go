package squall

import (
	"errors"
	"fmt"
)

// Kinds of API errors, for errors.Is. An *APIError matches the kind of its
// status (and, for the 404s, of its code).
var (
	ErrBadRequest      = errors.New("squall: bad request")        // 400 bad_request
	ErrUnauthorized    = errors.New("squall: unauthorized")       // 401 unauthorized
	ErrBadSignature    = errors.New("squall: bad signature")      // 403 bad_signature
	ErrNotFound        = errors.New("squall: not found")          // any 404
	ErrUnknownFunction = errors.New("squall: unknown function")   // 404 unknown_function
	ErrTaskNotFound    = errors.New("squall: task not found")     // 404 task_not_found
	ErrTooLarge        = errors.New("squall: request too large")  // 413 too_large
	ErrQueueFull       = errors.New("squall: queue full")         // 429 queue_full
	ErrUnavailable     = errors.New("squall: router unavailable") // 503 no_router
)

// ErrCancelled is returned by Call and Wait for a task that was cancelled.
var ErrCancelled = errors.New("squall: task cancelled")

// APIError is an error answer of the gateway: a non-2xx status with the body
// {"error": {"code": ..., "message": ...}}.
type APIError struct {
	Status  int    // HTTP status
	Code    string // e.g. "unknown_function"
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("squall: %d %s: %s", e.Status, e.Code, e.Message)
}

// Is reports whether target is the kind of e (see ErrUnauthorized and the others).
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrBadRequest:
		return e.Status == 400
	case ErrUnauthorized:
		return e.Status == 401
	case ErrBadSignature:
		return e.Status == 403
	case ErrNotFound:
		return e.Status == 404
	case ErrUnknownFunction:
		return e.Status == 404 && e.Code == "unknown_function"
	case ErrTaskNotFound:
		return e.Status == 404 && e.Code == "task_not_found"
	case ErrTooLarge:
		return e.Status == 413
	case ErrQueueFull:
		return e.Status == 429
	case ErrUnavailable:
		return e.Status == 503
	}
	return false
}

// TaskError is the outcome of a task that failed: the exception it raised.
type TaskError struct {
	Type      string `json:"type"` // the exception's name, e.g. "ValueError" or "squall.TaskTimeout"
	Message   string `json:"message"`
	Traceback string `json:"traceback"`
}

func (e *TaskError) Error() string {
	return fmt.Sprintf("squall: task failed: %s: %s", e.Type, e.Message)
}
