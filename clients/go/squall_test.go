package squall_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	squall "github.com/squall-dev/squall/clients/go"
)

// stack is what clients/harness.py prints once the stack answers.
var stack struct {
	URL           string `json:"url"`
	Token         string `json:"token"`
	WebhookSecret string `json:"webhook_secret"`
	PID           int    `json:"pid"`
	Logs          string `json:"logs"`
}

// TestMain runs the tests against a real squall stack started by the harness.
func TestMain(m *testing.M) {
	python := os.Getenv("PYTHON")
	if python == "" {
		python = filepath.Join("..", "..", ".venv", "bin", "python")
	}
	cmd := exec.Command(python, filepath.Join("..", "harness.py"))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		fail(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(fmt.Errorf("starting the harness with %s: %w", python, err))
	}
	stop := func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadBytes('\n')
		if err == nil {
			err = json.Unmarshal(line, &stack)
		}
		ready <- err
		io.Copy(io.Discard, stdout)
	}()
	select {
	case err = <-ready:
	case <-time.After(120 * time.Second):
		err = errors.New("the harness did not answer within 120 s")
	}
	if err != nil {
		stop()
		fail(fmt.Errorf("harness: %w", err))
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintln(os.Stderr, "stack logs:", stack.Logs)
	}
	stop()
	os.Exit(code)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "squall tests:", err)
	os.Exit(1)
}

func client() *squall.Client { return squall.New(stack.URL, squall.WithToken(stack.Token)) }

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestCallDeployed(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	sum, err := squall.CallInto[float64](ctx, client(), "math.add", []any{2, 3}, nil)
	if err != nil || sum != 5 {
		t.Fatalf("math.add(2, 3) = %v, %v; want 5", sum, err)
	}
	raw, err := client().Call(ctx, "math.add", []any{1.5}, &squall.CallOptions{Kwargs: map[string]any{"b": 2}})
	if err != nil || string(raw) != "3.5" {
		t.Fatalf("math.add(1.5, b=2) = %s, %v; want 3.5", raw, err)
	}
}

func TestCallPublished(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	got, err := squall.CallInto[int](ctx, client(), "published.double", []any{21}, nil)
	if err != nil || got != 42 {
		t.Fatalf("published.double(21) = %v, %v; want 42", got, err)
	}
}

func TestTaskError(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	_, err := client().Call(ctx, "text.shout", []any{""}, nil)
	var te *squall.TaskError
	if !errors.As(err, &te) {
		t.Fatalf("text.shout(\"\"): got %v; want a *TaskError", err)
	}
	if te.Type != "ValueError" || te.Message != "nothing to shout" || !strings.Contains(te.Traceback, "raise ValueError") {
		t.Fatalf("text.shout(\"\"): got %+v", te)
	}
	got, err := squall.CallInto[string](ctx, client(), "text.shout", []any{"hi"}, nil)
	if err != nil || got != "HI!" {
		t.Fatalf("text.shout(\"hi\") = %q, %v", got, err)
	}
}

func TestEnqueueGetWait(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	c := client()
	id, err := c.Enqueue(ctx, "sleep.echo", []any{0.5, "hello"}, nil)
	if err != nil || id == "" {
		t.Fatalf("Enqueue: %q, %v", id, err)
	}
	task, err := c.Get(ctx, id)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	switch task.State {
	case squall.StateQueued, squall.StateRunning, squall.StateSucceeded:
	default:
		t.Fatalf("Get: state %q", task.State)
	}
	if task.ID != id || task.Function != "sleep.echo" {
		t.Fatalf("Get: %+v", task)
	}
	raw, err := c.Wait(ctx, id)
	if err != nil || string(raw) != `"hello"` {
		t.Fatalf("Wait = %s, %v", raw, err)
	}
	task, err = c.Get(ctx, id)
	if err != nil || task.State != squall.StateSucceeded || task.Attempts != 1 || task.Finished == nil {
		t.Fatalf("Get after Wait: %+v, %v", task, err)
	}
}

func TestKey(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	c := client()
	opts := &squall.CallOptions{Options: squall.Options{Key: fmt.Sprintf("go-%d", time.Now().UnixNano())}}
	first, err := c.Enqueue(ctx, "sleep.echo", []any{0.2, 1}, opts)
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Enqueue(ctx, "sleep.echo", []any{0.2, 2}, opts)
	if err != nil || second != first {
		t.Fatalf("the same key: %q then %q, %v", first, second, err)
	}
}

func TestCancel(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	c := client()
	id, err := c.Enqueue(ctx, "sleep.echo", []any{30, "late"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancelled, err := c.Cancel(ctx, id)
	if err != nil || !cancelled {
		t.Fatalf("Cancel = %v, %v; want true", cancelled, err)
	}
	if _, err := c.Wait(ctx, id); !errors.Is(err, squall.ErrCancelled) {
		t.Fatalf("Wait after Cancel: %v; want ErrCancelled", err)
	}
	task, err := c.Get(ctx, id)
	if err != nil || task.State != squall.StateCancelled {
		t.Fatalf("Get after Cancel: %+v, %v", task, err)
	}
	if cancelled, err := c.Cancel(ctx, id); err != nil || cancelled {
		t.Fatalf("Cancel again = %v, %v; want false", cancelled, err)
	}
}

func TestUnauthorized(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	for _, c := range []*squall.Client{squall.New(stack.URL), squall.New(stack.URL, squall.WithToken("wrong"))} {
		_, err := c.Call(ctx, "math.add", []any{1, 2}, nil)
		var api *squall.APIError
		if !errors.Is(err, squall.ErrUnauthorized) || !errors.As(err, &api) || api.Status != 401 || api.Code != "unauthorized" {
			t.Fatalf("without a good token: %v; want 401 unauthorized", err)
		}
	}
}

func TestNotFound(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	_, err := client().Call(ctx, "no.such.function", nil, nil)
	var api *squall.APIError
	if !errors.Is(err, squall.ErrNotFound) || !errors.Is(err, squall.ErrUnknownFunction) || !errors.As(err, &api) || api.Status != 404 {
		t.Fatalf("an unknown function: %v; want 404 unknown_function", err)
	}
	_, err = client().Get(ctx, "01J0000000000000000000NONE")
	if !errors.Is(err, squall.ErrTaskNotFound) {
		t.Fatalf("an unknown task: %v; want 404 task_not_found", err)
	}
}

func TestWebhook(t *testing.T) {
	ctx := timeout(t, 30*time.Second)
	type delivery struct {
		header, id string
		body       []byte
	}
	got := make(chan delivery, 10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- delivery{r.Header.Get("Squall-Signature"), r.Header.Get("Squall-Task-Id"), body}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	opts := &squall.CallOptions{CallbackURL: "http://" + ln.Addr().String() + "/hook"}
	id, err := client().Enqueue(ctx, "math.add", []any{2, 3}, opts)
	if err != nil {
		t.Fatal(err)
	}
	var d delivery
	select {
	case d = <-got:
	case <-ctx.Done():
		t.Fatal("no webhook delivery")
	}
	if err := squall.VerifySignature(stack.WebhookSecret, d.header, d.body, 0); err != nil {
		t.Fatalf("VerifySignature(%q): %v", d.header, err)
	}
	var task squall.Task
	if err := json.Unmarshal(d.body, &task); err != nil || task.ID != id || d.id != id ||
		task.State != squall.StateSucceeded || string(task.Result) != "5" {
		t.Fatalf("delivery %s (task id header %q): %v", d.body, d.id, err)
	}
	tampered := append([]byte{}, d.body...)
	tampered[len(tampered)-1] ^= 1
	if err := squall.VerifySignature(stack.WebhookSecret, d.header, tampered, 0); !errors.Is(err, squall.ErrInvalidSignature) {
		t.Fatalf("a tampered body: %v; want ErrInvalidSignature", err)
	}
	if err := squall.VerifySignature("other secret", d.header, d.body, 0); err == nil {
		t.Fatal("another secret verifies")
	}
}

func TestVerifySignature(t *testing.T) {
	body := []byte(`{"id":"x"}`)
	if err := squall.VerifySignature("s", squall.Sign("s", body, time.Now()), body, 0); err != nil {
		t.Fatalf("a fresh signature: %v", err)
	}
	old := squall.Sign("s", body, time.Now().Add(-6*time.Minute))
	if err := squall.VerifySignature("s", old, body, 0); !errors.Is(err, squall.ErrInvalidSignature) {
		t.Fatalf("a 6 minutes old signature: %v", err)
	}
	if err := squall.VerifySignature("s", old, body, 10*time.Minute); err != nil {
		t.Fatalf("a 6 minutes old signature, 10 minutes tolerance: %v", err)
	}
	for _, header := range []string{"", "t=abc,v1=00", "t=1", "v1=00"} {
		if err := squall.VerifySignature("s", header, body, 0); !errors.Is(err, squall.ErrInvalidSignature) {
			t.Fatalf("header %q: %v", header, err)
		}
	}
}
