# frozen_string_literal: true

require "json"
require "net/http"
require "openssl"
require "uri"

module Squall
  # A client of one squall HTTP gateway (docs/http.md). Tasks are plain Hashes with the
  # API's string keys ("id", "state", "result", "error", ...).
  #
  #   squall = Squall::Client.new("http://127.0.0.1:8000", token: ENV["SQUALL_TOKEN"])
  #   squall.call("math.add", 2, 3)          # => 5
  #   id = squall.enqueue("sleep.echo", 1, "hi")
  #   squall.wait(id)                        # => "hi"
  class Client
    ENDED = %w[succeeded failed cancelled].freeze
    MAX_WAIT = 60 # the gateway waits at most 60 s per request (?wait=S)

    # +timeout+ bounds connecting and each plain request; long polls get their wait on top.
    # +ca_file+ trusts a private CA for a gateway served with --tls-cert.
    def initialize(url, token: nil, timeout: 30, ca_file: nil)
      @base = URI(url.to_s.chomp("/"))
      raise ArgumentError, "not an http(s) URL: #{url}" unless @base.is_a?(URI::HTTP)

      @token = token
      @timeout = timeout
      @ca_file = ca_file
    end

    # Calls +name+ and returns its result, waiting up to +timeout+ seconds; raises TaskError
    # if it failed, TimeoutError (with #task_id: it still runs) if it did not end in time.
    def call(name, *args, kwargs: {}, options: {}, timeout: 30)
      deadline = now + timeout
      task = request(:post, "/v1/functions/#{escape(name)}/calls",
                     body: call_body(args, kwargs, options, nil), wait: clamp(timeout))
      return outcome(task) if ENDED.include?(task["state"])

      wait(task.fetch("id"), timeout: deadline - now)
    end

    # Starts +name+ as a background task and returns its id at once. The router keeps it, so
    # it runs even if nobody waits; with +callback_url+ its task object is POSTed there.
    def enqueue(name, *args, kwargs: {}, options: {}, callback_url: nil)
      request(:post, "/v1/functions/#{escape(name)}/calls",
              body: call_body(args, kwargs, options, callback_url)).fetch("id")
    end

    # The task object, as it is now.
    def get(id)
      request(:get, "/v1/tasks/#{escape(id)}")
    end

    # Waits up to +timeout+ seconds for task +id+ to end and returns its result (or raises,
    # as #call does). Long-polls, so a long wait costs one request a minute, not a busy loop.
    def wait(id, timeout: 30)
      deadline = now + timeout
      loop do
        remaining = deadline - now
        started = now
        task = request(:get, "/v1/tasks/#{escape(id)}", wait: clamp(remaining))
        return outcome(task) if ENDED.include?(task["state"])
        raise TimeoutError.new("task #{id} did not end within #{timeout} s", task_id: id) if now >= deadline

        # A gateway answering early (before ?wait= ran out) must not turn this into a spin.
        sleep(0.1) if now - started < 0.1
      end
    end

    # Cancels task +id+: true if it was cancelled, false if it had already ended.
    def cancel(id)
      request(:delete, "/v1/tasks/#{escape(id)}")["cancelled"] == true
    end

    # {"functions" => [{"name", "version", "published_at", "workers", "queued", "running"}]}
    def functions
      request(:get, "/v1/functions").fetch("functions")
    end

    # {"status" => "ok", "workers" => N}; raises UnavailableError when the router is away.
    def health
      request(:get, "/v1/health")
    end

    private

    def call_body(args, kwargs, options, callback_url)
      body = { args: args, kwargs: kwargs, options: options }
      body[:callback_url] = callback_url if callback_url
      body
    end

    # The task's result, or the error it ended with.
    def outcome(task)
      case task["state"]
      when "succeeded" then task["result"]
      when "failed" then raise TaskError, task
      else raise CancelledError.new("task #{task['id']} was cancelled", task_id: task["id"])
      end
    end

    # One request; returns the parsed JSON body of a 2xx answer, raises the typed error of
    # any other. A connection per request keeps a Client safe to share between threads.
    def request(method, path, body: nil, wait: nil)
      uri = @base.dup
      uri.path = @base.path + path
      uri.query = URI.encode_www_form(wait: wait) if wait
      http = Net::HTTP.new(uri.host, uri.port)
      http.use_ssl = uri.scheme == "https"
      http.ca_file = @ca_file if @ca_file
      http.open_timeout = @timeout
      http.write_timeout = @timeout
      http.read_timeout = @timeout + (wait || 0) # the server holds a long poll for up to +wait+

      klass = { get: Net::HTTP::Get, post: Net::HTTP::Post, delete: Net::HTTP::Delete }.fetch(method)
      req = klass.new(uri)
      req["Accept"] = "application/json"
      req["User-Agent"] = "squall-ruby/#{VERSION}"
      req["Authorization"] = "Bearer #{@token}" if @token
      if body
        req["Content-Type"] = "application/json"
        req.body = JSON.generate(body)
      end
      answer(http.start { |conn| conn.request(req) })
    rescue SystemCallError, IOError, Net::OpenTimeout, Net::ReadTimeout, Net::WriteTimeout,
           OpenSSL::SSL::SSLError, SocketError => e
      # No answer at all: to the caller it is the same as a gateway that cannot serve (503).
      raise UnavailableError.new("#{@base}: #{e.class}: #{e.message}", code: "unreachable")
    end

    def answer(response)
      status = response.code.to_i
      data = parse(response.body)
      return data if (200..299).cover?(status) && data.is_a?(Hash)

      error = data.is_a?(Hash) && data["error"].is_a?(Hash) ? data["error"] : {}
      message = error["message"] || "HTTP #{status}: #{response.body.to_s[0, 200]}"
      raise ERRORS_BY_STATUS.fetch(status, Error).new(message, status: status, code: error["code"])
    end

    def parse(text)
      text.nil? || text.empty? ? nil : JSON.parse(text)
    rescue JSON::ParserError
      nil # a proxy's HTML error page, say: the status still tells what happened
    end

    # Seconds for ?wait=: within 0..MAX_WAIT, as an integer when whole ("wait=5", not "5.0").
    def clamp(seconds)
      seconds = seconds.to_f.clamp(0, MAX_WAIT)
      seconds == seconds.floor ? seconds.to_i : seconds.round(3)
    end

    # Function names ("math.add") and ids go in the path: escape anything but unreserved.
    def escape(segment)
      segment.to_s.gsub(/[^A-Za-z0-9._~-]/) { |c| c.bytes.map { |b| format("%%%02X", b) }.join }
    end

    def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
