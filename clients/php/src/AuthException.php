<?php

declare(strict_types=1);

namespace Squall;

/**
 * 401 unauthorized: a token is required and was missing or unknown.
 */
class AuthException extends SquallException
{
}
