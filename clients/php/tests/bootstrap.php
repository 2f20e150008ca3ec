<?php

declare(strict_types=1);

/**
 * Loads squall/client without Composer: Composer's autoloader if present, else a PSR-4 loader
 * of "Squall\" from src/.
 */
if (is_file(__DIR__ . '/../vendor/autoload.php')) {
    require __DIR__ . '/../vendor/autoload.php';
} else {
    spl_autoload_register(static function (string $class): void {
        if (str_starts_with($class, 'Squall\\')) {
            $file = __DIR__ . '/../src/' . str_replace('\\', '/', substr($class, 7)) . '.php';
            if (is_file($file)) {
                require $file;
            }
        }
    });
}
