# frozen_string_literal: true

module Squall
  VERSION = "0.1.0"
end
