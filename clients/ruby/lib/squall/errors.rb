# frozen_string_literal: true

module Squall
  # Root of every error this gem raises, so `rescue Squall::Error` catches them all.
  # #status is the HTTP status (nil when there was no answer) and #code the API's error code
  # ("unauthorized", "unknown_function", ...; see "Errors" in docs/http.md).
  class Error < StandardError
    attr_reader :status, :code

    def initialize(message = nil, status: nil, code: nil)
      super(message)
      @status = status
      @code = code
    end
  end

  class AuthError < Error; end        # 401: a token is required and missing or unknown
  class NotFoundError < Error; end    # 404: unknown_function or task_not_found
  class QueueFullError < Error; end   # 429: the router's queue is full; retry later
  class UnavailableError < Error; end # 503 (no router), or the gateway itself did not answer

  # The task did not end within the time we were willing to wait. It still runs (it is a
  # background task), so #task_id lets the caller wait again or cancel it.
  class TimeoutError < Error
    attr_reader :task_id

    def initialize(message = nil, task_id: nil)
      super(message)
      @task_id = task_id
    end
  end

  # The task ran and raised. #type is the remote exception's name ("ValueError",
  # "squall.TaskTimeout", ...); #remote_message and #traceback are its text. Exception#message
  # is taken by Ruby, hence "remote_message".
  class TaskError < Error
    attr_reader :type, :remote_message, :traceback, :task

    def initialize(task)
      error = task["error"] || {}
      @task = task
      @type = error["type"]
      @remote_message = error["message"]
      @traceback = error["traceback"]
      super([@type, @remote_message].compact.join(": "))
    end

    def task_id = task["id"]
  end

  # The task was cancelled (DELETE /v1/tasks/{id}) before it produced a result.
  class CancelledError < Error
    attr_reader :task_id

    def initialize(message = nil, task_id: nil)
      super(message)
      @task_id = task_id
    end
  end

  # HTTP status -> error class; any other non-2xx status is a plain Squall::Error.
  ERRORS_BY_STATUS = {
    401 => AuthError, 404 => NotFoundError, 429 => QueueFullError, 503 => UnavailableError,
  }.freeze
end
