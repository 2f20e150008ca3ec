# frozen_string_literal: true

# Tests of the Ruby client against a real squall stack (router, worker, HTTP gateway) started
# once by clients/harness.py. Python comes from $PYTHON, else the repository's .venv.
require "json"
require "open3"
require "socket"
require "timeout"
require "minitest/autorun"
require "squall"

# The stack, started when this file loads and stopped after the last test (even a failed run).
module Stack
  HERE = File.expand_path("..", __dir__) # clients/ruby
  PYTHON = ENV.fetch("PYTHON", File.expand_path("../../.venv/bin/python", HERE))
  HARNESS = File.expand_path("../harness.py", HERE)

  class << self
    attr_reader :info

    def start
      @stdin, @stdout, @thread = Open3.popen2(PYTHON, HARNESS, chdir: File.expand_path("../..", HERE))
      line = Timeout.timeout(120) { @stdout.gets }
      raise "harness exited without its JSON line (status #{@thread.value})" if line.nil?

      @info = JSON.parse(line)
    rescue StandardError
      stop
      raise
    end

    # Closing stdin asks the harness to stop what it started; a kill is the fallback.
    def stop
      return unless @thread

      @stdin.close unless @stdin.closed?
      return if @thread.join(20)

      Process.kill("TERM", @thread.pid)
      Process.kill("KILL", @thread.pid) unless @thread.join(10)
    rescue Errno::ESRCH
      nil # already gone
    ensure
      @thread = nil
    end
  end
end

Stack.start
Minitest.after_run { Stack.stop }

class ClientTest < Minitest::Test
  LIMIT = 60 # seconds any one test may take

  # Defines a test whose body is bounded in time, so a hung gateway fails a test, not the run.
  def self.test(description, limit: LIMIT, &body)
    define_method("test_#{description.gsub(/\W+/, '_')}") do
      Timeout.timeout(limit) { instance_exec(&body) }
    end
  end

  def url = Stack.info.fetch("url")
  def client = @client ||= Squall::Client.new(url, token: Stack.info.fetch("token"))

  test "call a deployed function with JSON args and kwargs" do
    assert_equal 5, client.call("math.add", 2, 3)
    assert_in_delta 3.75, client.call("math.add", kwargs: { a: 1.5, b: 2.25 })
    assert_equal "HI!", client.call("text.shout", "hi")
  end

  test "call a function published by value" do
    assert_equal 42, client.call("published.double", 21)
    assert_equal [1, 2, 1, 2], client.call("published.double", [1, 2])
  end

  test "a failed task raises TaskError with the remote type, message and traceback" do
    error = assert_raises(Squall::TaskError) { client.call("text.shout", "") }
    assert_equal "ValueError", error.type
    assert_equal "nothing to shout", error.remote_message
    assert_includes error.traceback, "raise ValueError"
    assert_equal "failed", error.task["state"]
    assert_kind_of Squall::Error, error # one rescue catches everything the gem raises
  end

  test "enqueue, get, wait" do
    id = client.enqueue("math.add", 20, 22)
    assert_kind_of String, id
    assert_includes %w[scheduled queued running succeeded], client.get(id)["state"]
    assert_equal 42, client.wait(id, timeout: 20)
    task = client.get(id)
    assert_equal "succeeded", task["state"]
    assert_equal 42, task["result"]
    assert_equal "math.add", task["function"]
  end

  test "cancel a long task" do
    id = client.enqueue("sleep.echo", 30, "late")
    sleep 0.5 # give it time to start: cancelling a running task is the harder case
    assert_equal true, client.cancel(id)
    state = nil
    10.times do # a running task is stopped by its worker: allow it a moment
      state = client.get(id)["state"]
      break if state == "cancelled"

      sleep 0.5
    end
    assert_equal "cancelled", state
    assert_raises(Squall::CancelledError) { client.wait(id, timeout: 5) }
    assert_equal false, client.cancel(id) # it has ended: nothing to cancel
  end

  test "call gives up at its timeout, and the task can still be cancelled" do
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    error = assert_raises(Squall::TimeoutError) { client.call("sleep.echo", 30, timeout: 1) }
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 5
    refute_nil error.task_id
    assert_equal true, client.cancel(error.task_id)
  end

  test "a missing or wrong token raises AuthError" do
    [Squall::Client.new(url), Squall::Client.new(url, token: "not-a-token")].each do |anonymous|
      error = assert_raises(Squall::AuthError) { anonymous.call("math.add", 1, 2) }
      assert_equal 401, error.status
      assert_equal "unauthorized", error.code
    end
    assert_equal "ok", Squall::Client.new(url).health["status"] # health needs no token
  end

  test "unknown function and unknown task raise NotFoundError" do
    error = assert_raises(Squall::NotFoundError) { client.call("no.such.function", 1) }
    assert_equal [404, "unknown_function"], [error.status, error.code]
    error = assert_raises(Squall::NotFoundError) { client.get("01NOSUCHTASK0000000000000") }
    assert_equal [404, "task_not_found"], [error.status, error.code]
  end

  test "functions lists what the router knows" do
    names = client.functions.map { |f| f["name"] }
    assert_includes names, "math.add"
    assert_includes names, "published.double"
  end

  test "a webhook arrives signed and verifies" do
    server = TCPServer.new("127.0.0.1", 0)
    received = Thread.new { receive_one(server) }
    id = client.enqueue("math.add", 1, 2,
                        callback_url: "http://127.0.0.1:#{server.addr[1]}/hook")
    headers, body = received.value
    secret = Stack.info.fetch("webhook_secret")

    assert_equal id, headers["squall-task-id"]
    assert_match %r{\Aapplication/json}, headers["content-type"]
    task = JSON.parse(body)
    assert_equal [id, "succeeded", 3], task.values_at("id", "state", "result")
    assert Squall::Webhook.verify(secret, headers["squall-signature"], body)
    tampered = body.sub("3", "4")
    refute_equal body, tampered
    refute Squall::Webhook.verify(secret, headers["squall-signature"], tampered)
    refute Squall::Webhook.verify("another-secret", headers["squall-signature"], body)
  ensure
    server&.close
  end

  test "webhook signatures: round trip, age, malformed headers" do
    body = '{"id": "x"}'
    now = Time.now.to_i
    assert Squall::Webhook.verify("s", Squall::Webhook.sign("s", body), body)
    refute Squall::Webhook.verify("s", Squall::Webhook.sign("s", body, timestamp: now - 301), body)
    refute Squall::Webhook.verify("s", Squall::Webhook.sign("s", body, timestamp: now + 301), body)
    assert Squall::Webhook.verify("s", Squall::Webhook.sign("s", body, timestamp: now - 900), body,
                                  tolerance: 1000)
    [nil, "", "t=abc,v1=00", "v1=00", "t=#{now}", "t=#{now},v1=zz"].each do |header|
      refute Squall::Webhook.verify("s", header, body), header.inspect
    end
  end

  test "error statuses map to typed errors" do
    { 429 => Squall::QueueFullError, 503 => Squall::UnavailableError, 400 => Squall::Error }
      .each do |status, klass|
        fake = fake_gateway(status, '{"error": {"code": "c", "message": "m"}}')
        error = assert_raises(klass) { Squall::Client.new(fake).enqueue("math.add") }
        assert_equal [status, "c", "m"], [error.status, error.code, error.message]
      end
    error = assert_raises(Squall::Error) { Squall::Client.new(fake_gateway(502, "<html>")).get("x") }
    assert_equal 502, error.status
    assert_raises(Squall::UnavailableError) { Squall::Client.new("http://127.0.0.1:1").health }
  end

  private

  # Accepts one HTTP request on +server+, answers 200, returns [headers (lowercase), body].
  def receive_one(server)
    socket = server.accept
    socket.gets # request line
    headers = {}
    while (line = socket.gets) && line != "\r\n"
      name, value = line.split(":", 2)
      headers[name.strip.downcase] = value.strip
    end
    body = if headers["transfer-encoding"]&.include?("chunked")
             read_chunked(socket)
           else
             socket.read(headers.fetch("content-length").to_i)
           end
    socket.write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    [headers, body]
  ensure
    socket&.close
  end

  def read_chunked(socket)
    body = +""
    while (size = socket.gets.to_i(16)).positive?
      body << socket.read(size)
      socket.read(2) # CRLF after each chunk
    end
    body
  end

  # A one-shot server answering +status+ with +body+: statuses the real stack cannot be made
  # to give on demand (429, 503).
  def fake_gateway(status, body)
    server = TCPServer.new("127.0.0.1", 0)
    Thread.new do
      socket = server.accept
      length = 0
      while (line = socket.gets) && line != "\r\n"
        length = line.split(":", 2)[1].to_i if line.downcase.start_with?("content-length:")
      end
      socket.read(length) # read the request's body: closing on unread bytes resets the connection
      socket.write("HTTP/1.1 #{status} X\r\nContent-Type: application/json\r\n" \
                   "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
      socket.close
      server.close
    end
    "http://127.0.0.1:#{server.addr[1]}"
  end
end
