// benchupstream: the fast plain-HTTP upstream shared by both proxies in bench/ (Go standard library only).
//
//	GET  /small          a fixed 128-byte body (the keep-alive / handshake / latency scenarios)
//	GET  /download?bytes=N   N zero bytes, streamed from one reused buffer (no file, no allocation per byte)
//	any  /upload         reads and discards the whole request body, then answers {"received": N}
//	GET  /headers        the request headers as JSON (to check which identity headers each proxy forwards)
//	GET  /__stats        counters: connections opened, requests, bytes received and sent
//
// It answers only after it has read a request body completely, so an upload is measured end to end.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

var (
	connsOpened int64
	connsOpen   int64
	requests    int64
	bytesIn     int64
	bytesOut    int64
	small       = []byte("ok. this is the benchmark upstream's small response body, 128 bytes long, padded with dots.....................................\n")
	zeros       = make([]byte, 1<<20)
)

func main() {
	listen := flag.String("listen", "127.0.0.1:3000", "address to listen on")
	flag.Parse()
	if len(small) != 128 {
		log.Fatalf("small body is %d bytes", len(small))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&requests, 1)
		h := w.Header()
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", "128")
		w.Write(small)
		atomic.AddInt64(&bytesOut, 128)
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&requests, 1)
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bytes=N required", 400)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(n, 10))
		left := n
		for left > 0 {
			chunk := int64(len(zeros))
			if left < chunk {
				chunk = left
			}
			m, err := w.Write(zeros[:chunk])
			atomic.AddInt64(&bytesOut, int64(m))
			if err != nil {
				return
			}
			left -= int64(m)
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&requests, 1)
		buf := make([]byte, 256<<10)
		var got int64
		for {
			m, err := r.Body.Read(buf)
			got += int64(m)
			if err != nil {
				break
			}
		}
		atomic.AddInt64(&bytesIn, got)
		body := []byte(fmt.Sprintf("{\"received\": %d}\n", got))
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&requests, 1)
		out := map[string]interface{}{"method": r.Method, "uri": r.RequestURI, "proto": r.Proto,
			"headers": r.Header, "host": r.Host, "content_length": r.ContentLength,
			"transfer_encoding": r.TransferEncoding}
		b, _ := json.Marshal(out)
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	mux.HandleFunc("/__stats", func(w http.ResponseWriter, r *http.Request) {
		b, _ := json.Marshal(map[string]int64{"conns_opened": atomic.LoadInt64(&connsOpened),
			"conns_open": atomic.LoadInt64(&connsOpen), "requests": atomic.LoadInt64(&requests),
			"bytes_in": atomic.LoadInt64(&bytesIn), "bytes_out": atomic.LoadInt64(&bytesOut)})
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       15 * time.Minute,
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				atomic.AddInt64(&connsOpened, 1)
				atomic.AddInt64(&connsOpen, 1)
			case http.StateClosed, http.StateHijacked:
				atomic.AddInt64(&connsOpen, -1)
			}
		},
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	log.Printf("benchupstream listening on %s", ln.Addr())
	log.Fatal(srv.Serve(ln))
}
