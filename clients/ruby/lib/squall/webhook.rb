# frozen_string_literal: true

require "openssl"

module Squall
  # Signatures of webhooks (docs/http.md, "Webhooks"):
  #   Squall-Signature: t=<unix seconds>,v1=<lowercase hex HMAC-SHA256 of "#{t}.#{body}">
  module Webhook
    HEADER = "Squall-Signature"

    module_function

    # True when +header+ is a valid signature of the raw request +body+ made with +secret+ no
    # more than +tolerance+ seconds from +now+. Verify the bytes as received, before parsing
    # them: re-encoded JSON would not match. Delivery is at least once, so a receiver should
    # also de-duplicate by the Squall-Task-Id header.
    def verify(secret, header, body, tolerance: 300, now: Time.now.to_i)
      return false if secret.nil? || header.nil? || body.nil?

      fields = header.to_s.split(",").map { |part| part.strip.split("=", 2) }
      stamps = fields.filter_map { |key, value| value if key == "t" }
      return false unless stamps.size == 1 && stamps[0].match?(/\A\d+\z/)

      t = stamps[0]
      # Outside the window in either direction: an old one may be a replay, and a far-future
      # one would stay "fresh" forever.
      return false if (now.to_i - Integer(t, 10)).abs > tolerance

      expected = hmac(secret, t, body)
      # Several v1 values may be sent while a secret is rotated: any one may match. The
      # compare is constant-time so the timing does not leak how much of a guess was right.
      fields.any? { |key, value| key == "v1" && OpenSSL.secure_compare(expected, value.to_s) }
    end

    # The header value for +body+ (e.g. to call a gateway's inbound POST /v1/hooks/{name}
    # when it runs with --hook-secret, or to test a receiver).
    def sign(secret, body, timestamp: Time.now.to_i)
      "t=#{timestamp.to_i},v1=#{hmac(secret, timestamp.to_i.to_s, body)}"
    end

    def hmac(secret, t, body)
      OpenSSL::HMAC.hexdigest("SHA256", secret.to_s, "#{t}.".b + body.to_s.b)
    end
    private_class_method :hmac
  end
end
