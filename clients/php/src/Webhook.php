<?php

declare(strict_types=1);

namespace Squall;

/**
 * Signatures of squall's webhooks: `Squall-Signature: t=<unix>,v1=<hex>`, where v1 is the
 * lowercase hex HMAC-SHA256, keyed with the secret, of `t . "." . body`.
 *
 * ```php
 * $body = file_get_contents('php://input');
 * if (!Webhook::verify($secret, $_SERVER['HTTP_SQUALL_SIGNATURE'] ?? '', $body)) {
 *     http_response_code(400);
 *     exit;
 * }
 * $task = json_decode($body, true);   // de-duplicate by $task['id']: delivery is at least once
 * ```
 */
final class Webhook
{
    /**
     * Whether $header signs $body with $secret, made at most $tolerance seconds from now.
     *
     * Any one of several `v1=` entries may match (as when a secret is being rotated). The
     * comparison is constant-time (hash_equals).
     *
     * @param string $header    the Squall-Signature header's value
     * @param string $body      the request body, exactly the bytes received
     * @param int    $tolerance the largest age (or clock skew ahead) accepted, in seconds
     */
    public static function verify(string $secret, string $header, string $body, int $tolerance = 300): bool
    {
        $timestamp = null;
        $signatures = [];
        foreach (explode(',', $header) as $part) {
            [$key, $value] = array_pad(explode('=', trim($part), 2), 2, '');
            if ($key === 't' && ctype_digit($value)) {
                $timestamp = $value;
            } elseif ($key === 'v1' && $value !== '') {
                $signatures[] = strtolower($value);
            }
        }
        if ($timestamp === null || $signatures === [] || abs(time() - (int) $timestamp) > $tolerance) {
            return false;
        }
        $expected = hash_hmac('sha256', $timestamp . '.' . $body, $secret);
        foreach ($signatures as $signature) {
            if (hash_equals($expected, $signature)) {
                return true;
            }
        }
        return false;
    }

    /**
     * A Squall-Signature header value for $body: to sign a request to `POST /v1/hooks/{name}`
     * of a gateway run with `--hook-secret`, or to test a receiver.
     *
     * @param int|null $timestamp Unix seconds; now if null
     */
    public static function sign(string $secret, string $body, ?int $timestamp = null): string
    {
        $t = (string) ($timestamp ?? time());
        return 't=' . $t . ',v1=' . hash_hmac('sha256', $t . '.' . $body, $secret);
    }
}
