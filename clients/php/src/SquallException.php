<?php

declare(strict_types=1);

namespace Squall;

/**
 * An error answered by the gateway (`{"error": {"code", "message"}}`) or met on the way to it.
 *
 * Subclasses name the statuses a caller commonly handles: {@see AuthException} (401),
 * {@see NotFoundException} (404), {@see QueueFullException} (429), {@see UnavailableException}
 * (503, or no answer at all) and {@see TimeoutException} (the task did not end in time).
 * A task that ran and failed raises {@see TaskException} instead.
 */
class SquallException extends \RuntimeException
{
    /**
     * @param int    $status    the HTTP status (0 when there was no HTTP answer)
     * @param string $errorCode the API's error code, e.g. "unknown_function"
     */
    public function __construct(
        string $message,
        private readonly int $status = 0,
        private readonly string $errorCode = '',
        ?\Throwable $previous = null,
    ) {
        parent::__construct($message, $status, $previous);
    }

    /** The HTTP status of the answer, or 0 when there was none. */
    public function getStatus(): int
    {
        return $this->status;
    }

    /** The API's error code (`unauthorized`, `task_not_found`, `queue_full`, ...). */
    public function getErrorCode(): string
    {
        return $this->errorCode;
    }

    /**
     * The exception for an error answer: the subclass matching its status.
     *
     * @param mixed $body the decoded JSON body, if any
     */
    public static function fromResponse(int $status, mixed $body): self
    {
        $error = is_array($body) && is_array($body['error'] ?? null) ? $body['error'] : [];
        $code = is_string($error['code'] ?? null) ? $error['code'] : 'http_' . $status;
        $message = is_string($error['message'] ?? null) ? $error['message'] : "HTTP status $status";
        $class = match ($status) {
            401 => AuthException::class,
            404 => NotFoundException::class,
            429 => QueueFullException::class,
            503 => UnavailableException::class,
            default => self::class,
        };
        return new $class("$code: $message", $status, $code);
    }
}
