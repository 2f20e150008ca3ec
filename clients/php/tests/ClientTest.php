<?php

/**
 * Tests of squall/client against a real squall stack (clients/harness.py: router, worker,
 * gateway). A plain script: `php tests/ClientTest.php`; exits non-zero if any check fails.
 *
 * PYTHON names the interpreter with squall installed (default: the repository's .venv).
 */

declare(strict_types=1);

require __DIR__ . '/bootstrap.php';

use Squall\AuthException;
use Squall\Client;
use Squall\NotFoundException;
use Squall\SquallException;
use Squall\TaskException;
use Squall\TimeoutException;
use Squall\UnavailableException;
use Squall\Webhook;

const TOTAL_SECONDS = 300;   // the whole run, harness included
const STARTUP_SECONDS = 120; // for the harness to print its line

// ---------------------------------------------------------------- assertion helpers

final class AssertionFailed extends Exception
{
}

function fail(string $message): never
{
    throw new AssertionFailed($message);
}

function assertSame(mixed $expected, mixed $actual, string $what = 'value'): void
{
    if ($expected !== $actual) {
        fail(sprintf('%s: expected %s, got %s', $what, var_export($expected, true), var_export($actual, true)));
    }
}

function assertTrue(bool $condition, string $what): void
{
    if (!$condition) {
        fail($what);
    }
}

/**
 * Runs $fn, which must throw a $class; returns what it threw.
 *
 * @template T of Throwable
 * @param class-string<T> $class
 * @return T
 */
function assertThrows(string $class, callable $fn, string $what = 'call'): Throwable
{
    try {
        $fn();
    } catch (Throwable $e) {
        if ($e instanceof $class) {
            return $e;
        }
        fail(sprintf('%s: expected %s, got %s: %s', $what, $class, $e::class, $e->getMessage()));
    }
    fail("$what: expected $class, nothing was thrown");
}

/** Results of the checks run so far. */
final class Results
{
    public static int $passed = 0;
    /** @var list<string> */
    public static array $failed = [];
}

/** Runs one named check and records how it went. */
function check(string $name, callable $fn): void
{
    $started = microtime(true);
    try {
        $fn();
        Results::$passed++;
        printf("ok   %-58s %5.2fs\n", $name, microtime(true) - $started);
    } catch (Throwable $e) {
        Results::$failed[] = $name;
        $where = $e instanceof AssertionFailed ? '' : sprintf(' (%s at %s:%d)', $e::class, $e->getFile(), $e->getLine());
        printf("FAIL %s: %s%s\n", $name, $e->getMessage(), $where);
    }
    flush();
}

// ---------------------------------------------------------------- the stack

/** clients/harness.py, run with proc_open and stopped however the script ends. */
final class Harness
{
    /** @var resource|null */
    private $process = null;
    /** @var array<int, resource> */
    private array $pipes = [];

    /** @var array{url: string, token: string, webhook_secret: string, pid: int, logs: string} */
    public array $info;

    public function start(): void
    {
        $python = getenv('PYTHON') ?: dirname(__DIR__) . '/../../.venv/bin/python';
        $script = dirname(__DIR__) . '/../harness.py';
        $this->process = proc_open(
            [$python, $script],
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => STDERR],
            $this->pipes,
        );
        if (!is_resource($this->process)) {
            throw new RuntimeException("cannot run $python $script");
        }
        stream_set_blocking($this->pipes[1], false);
        $line = '';
        $deadline = microtime(true) + STARTUP_SECONDS;
        while (!str_contains($line, "\n")) {
            $left = $deadline - microtime(true);
            if ($left <= 0) {
                throw new RuntimeException('the harness printed nothing within ' . STARTUP_SECONDS . ' s');
            }
            $read = [$this->pipes[1]];
            $write = $except = null;
            if (@stream_select($read, $write, $except, (int) $left, 0) > 0) {
                $chunk = fread($this->pipes[1], 8192);
                if ($chunk === '' || $chunk === false) {
                    if (feof($this->pipes[1])) {
                        throw new RuntimeException('the harness exited before it was ready (see its stderr above)');
                    }
                    continue;
                }
                $line .= $chunk;
            }
        }
        $info = json_decode(strtok($line, "\n"), true);
        if (!is_array($info) || !isset($info['url'], $info['token'], $info['webhook_secret'])) {
            throw new RuntimeException("the harness printed an unexpected line: $line");
        }
        $this->info = $info;
    }

    /** Closes the harness's stdin (it then stops its stack), then signals it if it lingers. */
    public function stop(): void
    {
        if ($this->process === null) {
            return;
        }
        foreach ($this->pipes as $pipe) {
            if (is_resource($pipe)) {
                fclose($pipe);
            }
        }
        $this->pipes = [];
        $pid = proc_get_status($this->process)['pid'];
        foreach ([[null, 25.0], [15 /* SIGTERM */, 10.0], [9 /* SIGKILL */, 5.0]] as [$signal, $grace]) {
            if ($signal !== null && proc_get_status($this->process)['running']) {
                function_exists('posix_kill') ? posix_kill($pid, $signal) : proc_terminate($this->process, $signal);
            }
            $until = microtime(true) + $grace;
            while (proc_get_status($this->process)['running'] && microtime(true) < $until) {
                usleep(100_000);
            }
        }
        proc_close($this->process);
        $this->process = null;
    }
}

// ---------------------------------------------------------------- a webhook receiver

/**
 * Accepts one HTTP request on $server and answers it 200.
 *
 * @param resource $server
 * @return array{line: string, headers: array<string, string>, body: string}
 */
function receiveOne($server, float $timeout): array
{
    $conn = @stream_socket_accept($server, $timeout);
    if ($conn === false) {
        fail("no webhook came within $timeout s");
    }
    stream_set_timeout($conn, 10);
    $line = trim((string) fgets($conn));
    $headers = [];
    while (($header = fgets($conn)) !== false && trim($header) !== '') {
        [$key, $value] = array_pad(explode(':', $header, 2), 2, '');
        $headers[strtolower(trim($key))] = trim($value);
    }
    $body = '';
    if (isset($headers['content-length'])) {
        $length = (int) $headers['content-length'];
        while (strlen($body) < $length && !feof($conn)) {
            $body .= (string) fread($conn, $length - strlen($body));
        }
    } elseif (str_contains(strtolower($headers['transfer-encoding'] ?? ''), 'chunked')) {
        while (($size = hexdec(trim((string) fgets($conn)))) > 0) {
            $chunk = '';
            while (strlen($chunk) < $size && !feof($conn)) {
                $chunk .= (string) fread($conn, $size - strlen($chunk));
            }
            $body .= $chunk;
            fgets($conn); // the CRLF after the chunk
        }
    }
    fwrite($conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    fclose($conn);
    return ['line' => $line, 'headers' => $headers, 'body' => $body];
}

/** Polls get($id) until its state is $state (or fails after $timeout seconds). */
function awaitState(Client $client, string $id, string $state, float $timeout = 10.0): array
{
    $deadline = microtime(true) + $timeout;
    do {
        $task = $client->get($id);
        if ($task['state'] === $state) {
            return $task;
        }
        usleep(100_000);
    } while (microtime(true) < $deadline);
    fail("task $id is still {$task['state']} after $timeout s, not $state");
}

// ---------------------------------------------------------------- the run

$began = microtime(true);
$harness = new Harness();
register_shutdown_function(static function () use ($harness): void {
    $harness->stop();
});
if (function_exists('pcntl_async_signals')) {
    pcntl_async_signals(true);
    pcntl_signal(SIGALRM, static function (): void {
        fwrite(STDERR, 'ClientTest: gave up after ' . TOTAL_SECONDS . " s\n");
        exit(2);
    });
    foreach ([SIGINT, SIGTERM] as $signal) {
        pcntl_signal($signal, static fn () => exit(130));
    }
    pcntl_alarm(TOTAL_SECONDS);
}

// Webhook signatures, without the stack.

check('Webhook::verify accepts what Webhook::sign made', function (): void {
    $body = '{"id": "01J", "state": "succeeded"}';
    assertTrue(Webhook::verify('s3cret', Webhook::sign('s3cret', $body), $body), 'a fresh signature');
    $t = time();
    $v1 = hash_hmac('sha256', "$t.$body", 's3cret');
    assertSame("t=$t,v1=$v1", Webhook::sign('s3cret', $body, $t), 'the header format');
    assertTrue(Webhook::verify('s3cret', "t=$t,v1=" . str_repeat('0', 64) . ",v1=$v1", $body), 'any v1 may match');
    assertTrue(Webhook::verify('s3cret', "t=$t, v1=" . strtoupper($v1), $body), 'spaces and upper-case hex');
});

check('Webhook::verify rejects tampering, other secrets, age, junk', function (): void {
    $body = '{"id": "01J", "state": "succeeded"}';
    $header = Webhook::sign('s3cret', $body);
    assertTrue(!Webhook::verify('s3cret', $header, $body . ' '), 'a tampered body');
    assertTrue(!Webhook::verify('other', $header, $body), 'another secret');
    assertTrue(!Webhook::verify('s3cret', Webhook::sign('s3cret', $body, time() - 301), $body), '301 s old');
    assertTrue(Webhook::verify('s3cret', Webhook::sign('s3cret', $body, time() - 290), $body), '290 s old');
    assertTrue(!Webhook::verify('s3cret', Webhook::sign('s3cret', $body, time() - 60), $body, tolerance: 30), 'a tolerance');
    assertTrue(!Webhook::verify('s3cret', Webhook::sign('s3cret', $body, time() + 3600), $body), 'from the future');
    foreach (['', 't=,v1=', 'v1=abc', 't=' . time(), 'garbage', 't=x1,v1=' . str_repeat('a', 64)] as $junk) {
        assertTrue(!Webhook::verify('s3cret', $junk, $body), "header '$junk'");
    }
});

check('an unreachable gateway raises UnavailableException', function (): void {
    $e = assertThrows(UnavailableException::class, fn () => (new Client('http://127.0.0.1:1', timeout: 5.0))->get('x'));
    assertSame(0, $e->getStatus(), 'status');
    assertSame('no_connection', $e->getErrorCode(), 'code');
});

// The real stack.

try {
    $harness->start();
} catch (Throwable $e) {
    Results::$failed[] = 'the harness started';
    echo "FAIL the harness started: {$e->getMessage()}\n";
}

if (isset($harness->info)) {
    ['url' => $url, 'token' => $token, 'webhook_secret' => $secret] = $harness->info;
    echo "# stack at $url (logs: {$harness->info['logs']})\n";
    $client = new Client($url, $token);

    check('call math.add (deployed) with args, kwargs and options', function () use ($client): void {
        assertSame(5, $client->call('math.add', [2, 3]), 'add(2, 3)');
        assertSame(3.5, $client->call('math.add', kwargs: ['a' => 1.5, 'b' => 2]), 'add(a=1.5, b=2)');
        assertSame(7, $client->call('math.add', [3], ['b' => 4], ['priority' => 5, 'retries' => 0, 'timeout' => 10]), 'add(3, b=4)');
    });

    check('call published.double (published by value)', function () use ($client): void {
        assertSame(42, $client->call('published.double', [21]), 'double(21)');
        assertSame(3.0, $client->call('published.double', [1.5]), 'double(1.5)');
        assertSame('abab', $client->call('published.double', ['ab']), 'double("ab")');
        assertSame([1, 'x', 1, 'x'], $client->call('published.double', [[1, 'x']]), 'double([1, "x"])');
    });

    check('call text.shout, and a failing one raises TaskException', function () use ($client): void {
        assertSame('HI!', $client->call('text.shout', ['hi']), 'shout("hi")');
        $e = assertThrows(TaskException::class, fn () => $client->call('text.shout', ['']), 'shout("")');
        assertSame('ValueError', $e->getType(), 'type');
        assertSame('nothing to shout', $e->getRemoteMessage(), 'message');
        assertTrue(str_contains($e->getTraceback(), 'raise ValueError'), 'the traceback has "raise ValueError": ' . $e->getTraceback());
        assertSame('failed', $e->task['state'] ?? null, 'the task state');
        assertTrue($e->getTaskId() !== '', 'the task id is known');
    });

    check('enqueue, get, wait', function () use ($client): void {
        $id = $client->enqueue('math.add', [20, 22]);
        assertTrue($id !== '', 'an id');
        $task = $client->get($id);
        assertSame($id, $task['id'], 'the id of get()');
        assertTrue(in_array($task['state'], ['scheduled', 'queued', 'running', 'succeeded'], true), "a state: {$task['state']}");
        assertSame(42, $client->wait($id, 20.0), 'wait()');
        $task = $client->get($id);
        assertSame('succeeded', $task['state'], 'the state after wait()');
        assertSame(42, $task['result'], 'the result of get()');
        assertSame('math.add', $task['function'] ?? null, 'the function of get()');
    });

    check('options.key: the same key gives the same task', function () use ($client): void {
        $key = 'php-' . bin2hex(random_bytes(6));
        $first = $client->enqueue('math.add', [1, 1], options: ['key' => $key]);
        assertSame($first, $client->enqueue('math.add', [1, 1], options: ['key' => $key]), 'the second id');
        assertSame(2, $client->wait($first), 'the result');
    });

    check('wait() times out; cancel() stops a long sleep.echo', function () use ($client): void {
        $id = $client->enqueue('sleep.echo', [30, 'late']);
        $started = microtime(true);
        $e = assertThrows(TimeoutException::class, fn () => $client->wait($id, 1.0), 'wait(1 s)');
        assertTrue(microtime(true) - $started < 5, 'wait(1 s) took ' . round(microtime(true) - $started, 1) . ' s');
        assertSame($id, $e->taskId, 'the task id of the timeout');
        assertSame('timeout', $e->getErrorCode(), 'code');
        assertTrue($client->cancel($id), 'cancel() of a running task');
        awaitState($client, $id, 'cancelled');
        $e = assertThrows(TaskException::class, fn () => $client->wait($id, 5.0), 'wait() on a cancelled task');
        assertSame('cancelled', $e->task['state'] ?? null, 'the state of the TaskException');
        assertSame(false, $client->cancel($id), 'cancel() again');
    });

    check('call() with a short timeout raises TimeoutException', function () use ($client): void {
        $e = assertThrows(TimeoutException::class, fn () => $client->call('sleep.echo', [30], timeout: 1.0), 'call(1 s)');
        assertTrue($client->cancel($e->taskId), 'cancel() of the task that timed out');
    });

    check('a missing or wrong token raises AuthException', function () use ($url): void {
        foreach (['no token' => null, 'a wrong token' => 'not-a-token'] as $what => $bad) {
            $e = assertThrows(AuthException::class, fn () => (new Client($url, $bad))->call('math.add', [1, 2]), $what);
            assertSame(401, $e->getStatus(), "$what: status");
            assertSame('unauthorized', $e->getErrorCode(), "$what: code");
            assertTrue($e instanceof SquallException, "$what: a SquallException");
        }
    });

    check('an unknown function or task raises NotFoundException', function () use ($client): void {
        $e = assertThrows(NotFoundException::class, fn () => $client->call('no.such.function', [1]), 'call');
        assertSame(404, $e->getStatus(), 'status');
        assertSame('unknown_function', $e->getErrorCode(), 'code');
        $e = assertThrows(NotFoundException::class, fn () => $client->enqueue('no.such.function'), 'enqueue');
        assertSame('unknown_function', $e->getErrorCode(), 'code of enqueue');
        $e = assertThrows(NotFoundException::class, fn () => $client->get('01J0000000000000000000000Z'), 'get');
        assertSame('task_not_found', $e->getErrorCode(), 'code of get');
        assertThrows(NotFoundException::class, fn () => $client->cancel('01J0000000000000000000000Z'), 'cancel');
    });

    check('a webhook arrives signed', function () use ($client, $secret): void {
        $server = stream_socket_server('tcp://127.0.0.1:0', $errno, $errstr);
        assertTrue($server !== false, "listen: $errstr");
        try {
            $address = stream_socket_get_name($server, false);
            $id = $client->enqueue('math.add', [2, 3], callbackUrl: "http://$address/hook");
            $request = receiveOne($server, 30.0);
        } finally {
            fclose($server);
        }
        assertTrue(str_starts_with($request['line'], 'POST /hook '), "the request line: {$request['line']}");
        assertTrue(str_starts_with($request['headers']['content-type'] ?? '', 'application/json'), 'Content-Type');
        assertSame($id, $request['headers']['squall-task-id'] ?? null, 'Squall-Task-Id');
        $task = json_decode($request['body'], true);
        assertSame($id, $task['id'] ?? null, 'the id in the body');
        assertSame('succeeded', $task['state'] ?? null, 'the state in the body');
        assertSame(5, $task['result'] ?? null, 'the result in the body');
        $signature = $request['headers']['squall-signature'] ?? '';
        assertTrue(Webhook::verify($secret, $signature, $request['body']), "the signature verifies: $signature");
        assertTrue(!Webhook::verify($secret, $signature, $request['body'] . ' '), 'a tampered body does not');
        assertTrue(!Webhook::verify('not-the-secret', $signature, $request['body']), 'another secret does not');
    });
}

$total = Results::$passed + count(Results::$failed);
printf("\n%d/%d checks passed in %.1f s\n", Results::$passed, $total, microtime(true) - $began);
if (Results::$failed !== []) {
    echo 'failed: ' . implode('; ', Results::$failed) . "\n";
    exit(1);
}
exit(0);
