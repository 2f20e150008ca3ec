<?php

declare(strict_types=1);

namespace Squall;

/**
 * 429 `queue_full`: the router's queue is full; retry later.
 */
class QueueFullException extends SquallException
{
}
