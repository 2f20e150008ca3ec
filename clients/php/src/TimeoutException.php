<?php

declare(strict_types=1);

namespace Squall;

/**
 * The task did not end within the time given to {@see Client::call()} or
 * {@see Client::wait()} (status 0, code `timeout`). The task itself goes on: wait again or cancel it.
 */
class TimeoutException extends SquallException
{
    /** @param string $taskId the task that did not end */
    public function __construct(string $message, public readonly string $taskId = '')
    {
        parent::__construct($message, 0, 'timeout');
    }
}
