<?php

declare(strict_types=1);

namespace Squall;

/**
 * 503 `no_router`: the router does not answer; or, with status 0 and code
 * `no_connection`, the gateway itself could not be reached.
 */
class UnavailableException extends SquallException
{
}
