// Package squall is a client of squall's HTTP gateway (docs/http.md): it calls
// squall's named functions with JSON arguments and reads their JSON outcomes.
//
//	c := squall.New("http://127.0.0.1:8000", squall.WithToken(token))
//	sum, err := squall.CallInto[float64](ctx, c, "math.add", []any{2, 3}, nil)
package squall

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxWait is the longest ?wait= the gateway takes, in seconds.
const maxWait = 60

// State is the state of a task.
type State string

// The states of a task; the last three are final.
const (
	StateScheduled State = "scheduled"
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateCancelled State = "cancelled"
)

// Done reports whether s is a final state.
func (s State) Done() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled
}

// Task is the gateway's task object. Times are Unix seconds, nil when not yet known.
type Task struct {
	ID        string          `json:"id"`
	Function  string          `json:"function"`
	State     State           `json:"state"`
	Result    json.RawMessage `json:"result,omitempty"` // a succeeded task's result
	Error     *TaskError      `json:"error,omitempty"`  // a failed task's exception
	Attempts  int             `json:"attempts"`
	Submitted *float64        `json:"submitted"`
	Started   *float64        `json:"started"`
	Finished  *float64        `json:"finished"`
}

// Options are a call's task options; zero fields are left to the server.
type Options struct {
	Queue    string        // the queue, "default" when empty
	Priority int           // higher runs first
	Delay    time.Duration // how long before it may start
	Expires  time.Duration // if never started by then, it fails with squall.TaskExpired
	Timeout  time.Duration // the time limit of each attempt
	Retries  *int          // attempts again on an exception (a pointer, so that 0 can be said)
	Key      string        // a unique key: calling again with it returns the same task
}

// CallOptions are the optional parts of a call.
type CallOptions struct {
	Kwargs      map[string]any // keyword arguments
	Options     Options
	CallbackURL string // the task object is POSTed there when the task ends (see VerifySignature)
}

// Client calls functions through a squall HTTP gateway. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends token as "Authorization: Bearer TOKEN" with every request.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTPClient makes requests with hc instead of http.DefaultClient. Its
// Timeout, if any, must be longer than a minute for the long waits of Call and Wait.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// New returns a client of the gateway at url (e.g. "http://127.0.0.1:8000").
func New(url string, opts ...Option) *Client {
	c := &Client{base: strings.TrimRight(url, "/"), hc: http.DefaultClient}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

// Call calls the function name with args and waits for its result, until ctx ends.
// A failed task returns a *TaskError, a cancelled one ErrCancelled, an error
// answer of the gateway an *APIError.
func (c *Client) Call(ctx context.Context, name string, args []any, opts *CallOptions) (json.RawMessage, error) {
	task, err := c.submit(ctx, name, args, opts, waitSeconds(ctx))
	if err != nil {
		return nil, err
	}
	if !task.State.Done() {
		return c.Wait(ctx, task.ID)
	}
	return task.outcome()
}

// CallInto is Call that decodes the result into a T.
func CallInto[T any](ctx context.Context, c *Client, name string, args []any, opts *CallOptions) (T, error) {
	var v T
	raw, err := c.Call(ctx, name, args, opts)
	if err == nil {
		err = json.Unmarshal(raw, &v)
	}
	return v, err
}

// Enqueue starts the function name with args as a background task and returns its id.
func (c *Client) Enqueue(ctx context.Context, name string, args []any, opts *CallOptions) (string, error) {
	task, err := c.submit(ctx, name, args, opts, -1)
	if err != nil {
		return "", err
	}
	return task.ID, nil
}

// Get returns the task id as it is now.
func (c *Client) Get(ctx context.Context, id string) (*Task, error) {
	var task Task
	err := c.do(ctx, http.MethodGet, "/v1/tasks/"+url.PathEscape(id), nil, &task)
	return &task, err
}

// Wait waits for the task id to end, until ctx ends, and returns its result (or
// its error as Call does).
func (c *Client) Wait(ctx context.Context, id string) (json.RawMessage, error) {
	for {
		var task Task
		path := "/v1/tasks/" + url.PathEscape(id) + "?wait=" + strconv.Itoa(waitSeconds(ctx))
		if err := c.do(ctx, http.MethodGet, path, nil, &task); err != nil {
			return nil, err
		}
		if task.State.Done() {
			return task.outcome()
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// Cancel cancels the task id: a queued one never runs, a running one is stopped.
// It reports false if the task had already ended.
func (c *Client) Cancel(ctx context.Context, id string) (bool, error) {
	var answer struct {
		Cancelled bool `json:"cancelled"`
	}
	err := c.do(ctx, http.MethodDelete, "/v1/tasks/"+url.PathEscape(id), nil, &answer)
	return answer.Cancelled, err
}

// submit POSTs a call; wait < 0 means no ?wait=.
func (c *Client) submit(ctx context.Context, name string, args []any, opts *CallOptions, wait int) (*Task, error) {
	if opts == nil {
		opts = &CallOptions{}
	}
	if args == nil {
		args = []any{}
	}
	body := map[string]any{"args": args}
	if opts.Kwargs != nil {
		body["kwargs"] = opts.Kwargs
	}
	if o := opts.Options.wire(); len(o) > 0 {
		body["options"] = o
	}
	if opts.CallbackURL != "" {
		body["callback_url"] = opts.CallbackURL
	}
	path := "/v1/functions/" + url.PathEscape(name) + "/calls"
	if wait >= 0 {
		path += "?wait=" + strconv.Itoa(wait)
	}
	var task Task
	if err := c.do(ctx, http.MethodPost, path, body, &task); err != nil {
		return nil, err
	}
	return &task, nil
}

// wire returns the options as the gateway's JSON object, without the zero ones.
func (o Options) wire() map[string]any {
	m := map[string]any{}
	if o.Queue != "" {
		m["queue"] = o.Queue
	}
	if o.Priority != 0 {
		m["priority"] = o.Priority
	}
	for name, d := range map[string]time.Duration{"delay": o.Delay, "expires": o.Expires, "timeout": o.Timeout} {
		if d != 0 {
			m[name] = d.Seconds()
		}
	}
	if o.Retries != nil {
		m["retries"] = *o.Retries
	}
	if o.Key != "" {
		m["key"] = o.Key
	}
	return m
}

// outcome returns the result of a finished task, or its error.
func (t *Task) outcome() (json.RawMessage, error) {
	switch t.State {
	case StateSucceeded:
		if t.Result == nil {
			return json.RawMessage("null"), nil
		}
		return t.Result, nil
	case StateFailed:
		if t.Error == nil {
			return nil, &TaskError{Message: "failed without an error"}
		}
		return nil, t.Error
	case StateCancelled:
		return nil, ErrCancelled
	}
	return nil, fmt.Errorf("squall: task %s is %s, not done", t.ID, t.State)
}

// waitSeconds is how long a request may wait for a task: what is left of ctx,
// at most maxWait seconds.
func waitSeconds(ctx context.Context) int {
	deadline, ok := ctx.Deadline()
	if !ok {
		return maxWait
	}
	left := math.Ceil(time.Until(deadline).Seconds())
	return int(math.Max(0, math.Min(maxWait, left)))
}

// do sends a request with body (if not nil) as JSON and decodes a 2xx answer
// into out, or returns an *APIError.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("squall: encoding the request: %w", err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, reader)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return apiError(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("squall: decoding the answer to %s %s: %w", method, path, err)
	}
	return nil
}

// apiError makes the *APIError of an error answer.
func apiError(status int, data []byte) *APIError {
	var answer struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	e := &APIError{Status: status}
	if json.Unmarshal(data, &answer) == nil && answer.Error.Code != "" {
		e.Code, e.Message = answer.Error.Code, answer.Error.Message
	} else {
		e.Message = strings.TrimSpace(string(data))
		if e.Message == "" {
			e.Message = http.StatusText(status)
		}
	}
	return e
}
