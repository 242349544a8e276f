/* Just enough of the Arduino core to run a sketch's setup()/loop() on the host, with a
 * simulated clock, pins, ADC and serial port that test_sketch.cpp controls. */
#ifndef ARDUINO_STUB_H
#define ARDUINO_STUB_H

#include <stddef.h>
#include <stdint.h>

#define HIGH 1
#define LOW 0
#define INPUT 0
#define OUTPUT 1
#define A0 14

void pinMode(uint8_t pin, uint8_t mode);
void digitalWrite(uint8_t pin, uint8_t value);
int analogRead(uint8_t pin);
unsigned long micros(void);
void delayMicroseconds(unsigned int us);

class StubSerial {
  public:
    void begin(unsigned long baud);
    int available(void);
    int read(void);
    size_t write(uint8_t byte);
    size_t write(const uint8_t *data, size_t len);
};

extern StubSerial Serial;

#endif
