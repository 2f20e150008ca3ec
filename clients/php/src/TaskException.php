<?php

declare(strict_types=1);

namespace Squall;

/**
 * The task ran and did not succeed: it failed (its function raised, or squall failed it, e.g.
 * `squall.TaskTimeout`, `squall.TaskExpired`, `squall.WorkerLost`), or it was cancelled (type
 * `squall.Cancelled` unless the gateway names it: the API reports cancellation as a state).
 *
 * This is the remote task's error, not an API error, so it is not a {@see SquallException}.
 */
class TaskException extends \RuntimeException
{
    /**
     * @param array<string, mixed> $task the task object, as the gateway sent it
     */
    public function __construct(
        private readonly string $type,
        private readonly string $remoteMessage,
        private readonly string $traceback,
        public readonly array $task = [],
    ) {
        parent::__construct($remoteMessage === '' ? $type : "$type: $remoteMessage");
    }

    /**
     * The exception for a task object whose state is `failed` or `cancelled`.
     *
     * @param array<string, mixed> $task
     */
    public static function fromTask(array $task): self
    {
        $error = is_array($task['error'] ?? null) ? $task['error'] : [];
        $cancelled = ($task['state'] ?? null) === 'cancelled';
        return new self(
            (string) ($error['type'] ?? ($cancelled ? 'squall.Cancelled' : 'squall.UnknownError')),
            (string) ($error['message'] ?? ($cancelled ? 'task ' . ($task['id'] ?? '?') . ' was cancelled' : '')),
            (string) ($error['traceback'] ?? ''),
            $task,
        );
    }

    /** The remote exception's name, e.g. "ValueError" or "squall.TaskTimeout". */
    public function getType(): string
    {
        return $this->type;
    }

    /** The remote exception's message (str() of it in Python). */
    public function getRemoteMessage(): string
    {
        return $this->remoteMessage;
    }

    /** The remote traceback, "Traceback (most recent call last): ...", or "" if none. */
    public function getTraceback(): string
    {
        return $this->traceback;
    }

    /** The id of the task that failed. */
    public function getTaskId(): string
    {
        return (string) ($this->task['id'] ?? '');
    }
}
