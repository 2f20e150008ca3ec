<?php

declare(strict_types=1);

namespace Squall;

/**
 * A client of squall's HTTP gateway (`squall http`): calls squall's named functions with JSON.
 *
 * ```php
 * $squall = new Client('http://127.0.0.1:8000', token: getenv('SQUALL_TOKEN') ?: null);
 * $sum = $squall->call('math.add', [2, 3]);                  // 5
 * $id = $squall->enqueue('report.build', kwargs: ['month' => '2024-05']);
 * $report = $squall->wait($id, timeout: 120.0);
 * ```
 *
 * Only PHP's standard library is used (HTTP through stream contexts; no curl).
 */
final class Client
{
    /** The longest `?wait=` the API accepts, in seconds. */
    private const MAX_WAIT = 60.0;

    /** States after which a task never changes. */
    private const ENDED = ['succeeded', 'failed', 'cancelled'];

    private readonly string $url;

    /**
     * @param string      $url     the gateway's base URL, e.g. "http://127.0.0.1:8000"
     * @param string|null $token   a bearer token (`squall token create`), if the gateway needs one
     * @param float       $timeout seconds to wait for an HTTP answer (on top of any `?wait=`)
     */
    public function __construct(
        string $url,
        private readonly ?string $token = null,
        private readonly float $timeout = 30.0,
    ) {
        $this->url = rtrim($url, '/');
    }

    /**
     * Calls the function $name and waits for its result.
     *
     * @param list<mixed>          $args    positional arguments (JSON values)
     * @param array<string, mixed> $kwargs  keyword arguments
     * @param array<string, mixed> $options task options: queue, priority, delay, expires,
     *                                      timeout, retries, key (see docs/http.md)
     * @param float                $timeout seconds to wait for the task to end
     *
     * @return mixed the function's result, decoded from JSON (objects as arrays)
     *
     * @throws TaskException    the task failed or was cancelled
     * @throws TimeoutException it did not end within $timeout (it still runs)
     * @throws SquallException  the gateway refused the call (AuthException, NotFoundException, ...)
     */
    public function call(
        string $name,
        array $args = [],
        array $kwargs = [],
        array $options = [],
        float $timeout = 30.0,
    ): mixed {
        $deadline = microtime(true) + $timeout;
        $task = $this->submit($name, $args, $kwargs, $options, null, $timeout);
        if (in_array($task['state'] ?? null, self::ENDED, true)) {
            return self::outcome($task);
        }
        return $this->waitUntil((string) $task['id'], $deadline);
    }

    /**
     * Starts the function $name as a background task, without waiting for it.
     *
     * @param list<mixed>          $args
     * @param array<string, mixed> $kwargs
     * @param array<string, mixed> $options     see {@see call()}
     * @param string|null          $callbackUrl the task object is POSTed there when the task ends
     *                                          (signed: see {@see Webhook::verify()})
     *
     * @return string the task's id
     *
     * @throws SquallException the gateway refused the call
     */
    public function enqueue(
        string $name,
        array $args = [],
        array $kwargs = [],
        array $options = [],
        ?string $callbackUrl = null,
    ): string {
        return (string) $this->submit($name, $args, $kwargs, $options, $callbackUrl, null)['id'];
    }

    /**
     * The task object: id, function, state (scheduled, queued, running, succeeded, failed,
     * cancelled), result or error, attempts, submitted, started, finished.
     *
     * @return array<string, mixed>
     *
     * @throws NotFoundException no task has that id
     */
    public function get(string $id): array
    {
        return $this->request('GET', '/v1/tasks/' . rawurlencode($id));
    }

    /**
     * Waits for the task $id to end and returns its result.
     *
     * @throws TaskException     the task failed or was cancelled
     * @throws TimeoutException  it did not end within $timeout seconds (it still runs)
     * @throws NotFoundException no task has that id
     */
    public function wait(string $id, float $timeout = 30.0): mixed
    {
        return $this->waitUntil($id, microtime(true) + $timeout);
    }

    /**
     * Cancels the task $id: a queued one never runs, a running one is stopped.
     *
     * @return bool true if it was cancelled, false if it had already ended
     *
     * @throws NotFoundException no task has that id
     */
    public function cancel(string $id): bool
    {
        return (bool) ($this->request('DELETE', '/v1/tasks/' . rawurlencode($id))['cancelled'] ?? false);
    }

    /**
     * POSTs a call; with $wait, asks the gateway to hold the answer until the task ends.
     *
     * @return array<string, mixed> the task object, or {id, state} if it has not ended
     */
    private function submit(
        string $name,
        array $args,
        array $kwargs,
        array $options,
        ?string $callbackUrl,
        ?float $wait,
    ): array {
        $body = [
            'args' => array_values($args),
            'kwargs' => (object) $kwargs,
            'options' => (object) $options,
        ];
        if ($callbackUrl !== null) {
            $body['callback_url'] = $callbackUrl;
        }
        return $this->request('POST', '/v1/functions/' . rawurlencode($name) . '/calls', $body, $wait);
    }

    /** Polls the task with long `?wait=` requests until it ends or $deadline passes. */
    private function waitUntil(string $id, float $deadline): mixed
    {
        while (true) {
            $left = $deadline - microtime(true);
            if ($left <= 0) {
                throw new TimeoutException("task $id did not end in time", $id);
            }
            $asked = microtime(true);
            $task = $this->request('GET', '/v1/tasks/' . rawurlencode($id), null, $left);
            if (in_array($task['state'] ?? null, self::ENDED, true)) {
                return self::outcome($task);
            }
            if (microtime(true) - $asked < 0.05) {
                usleep(50_000); // the gateway answered at once: do not spin
            }
        }
    }

    /**
     * The result of an ended task, or its failure thrown.
     *
     * @param array<string, mixed> $task
     */
    private static function outcome(array $task): mixed
    {
        if (($task['state'] ?? null) === 'succeeded') {
            return $task['result'] ?? null;
        }
        throw TaskException::fromTask($task);
    }

    /**
     * One HTTP request to the gateway, JSON in and out.
     *
     * @param mixed      $body a value to send as JSON, or null for no body
     * @param float|null $wait seconds for `?wait=` (capped at 60), or null for none
     *
     * @return array<string, mixed> the decoded JSON object of a 2xx answer
     *
     * @throws SquallException for any other answer, or none
     */
    private function request(string $method, string $path, mixed $body = null, ?float $wait = null): array
    {
        $url = $this->url . $path;
        $timeout = $this->timeout;
        if ($wait !== null) {
            $wait = min(max($wait, 0.0), self::MAX_WAIT);
            $url .= '?wait=' . rtrim(rtrim(sprintf('%.3F', $wait), '0'), '.');
            $timeout += $wait;
        }
        $headers = ['Accept: application/json', 'User-Agent: squall-php/0.1'];
        if ($this->token !== null && $this->token !== '') {
            $headers[] = 'Authorization: Bearer ' . $this->token;
        }
        $http = [
            'method' => $method,
            'ignore_errors' => true,      // read 4xx/5xx bodies instead of failing
            'follow_location' => 0,       // 202 carries a Location we do not follow
            'timeout' => $timeout,
        ];
        if ($body !== null) {
            $headers[] = 'Content-Type: application/json';
            $http['content'] = json_encode($body, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION);
        }
        $http['header'] = implode("\r\n", $headers);

        $problem = '';
        set_error_handler(static function (int $no, string $message) use (&$problem): bool {
            $problem = $message;
            return true;
        });
        try {
            $raw = file_get_contents($url, false, stream_context_create(['http' => $http]));
        } finally {
            restore_error_handler();
        }
        $status = self::status($http_response_header ?? []);
        if ($raw === false || $status === 0) {
            throw new UnavailableException(
                "cannot reach the squall gateway at {$this->url}" . ($problem !== '' ? ": $problem" : ''),
                0,
                'no_connection',
            );
        }
        $decoded = json_decode($raw, true);
        if ($status < 200 || $status >= 300) {
            throw SquallException::fromResponse($status, $decoded);
        }
        if (!is_array($decoded)) {
            throw new SquallException("the gateway answered $status with a body that is not a JSON object", $status, 'bad_response');
        }
        return $decoded;
    }

    /**
     * The status of the last response in $http_response_header (0 if there was none).
     *
     * @param list<string> $lines
     */
    private static function status(array $lines): int
    {
        $status = 0;
        foreach ($lines as $line) {
            if (preg_match('#^HTTP/\S+\s+(\d{3})#', $line, $m)) {
                $status = (int) $m[1];
            }
        }
        return $status;
    }
}
