<?php

declare(strict_types=1);

namespace Squall;

/**
 * 404: no such function (`unknown_function`) or task (`task_not_found`).
 */
class NotFoundException extends SquallException
{
}
